"""HTTP intake of the API: authenticated GETs and event-publishing POSTs per second at
16 concurrent, on SQLite and on PostgreSQL, beside a bare Starlette app served the same
way (uvicorn, TUNELAB_API_WORKERS processes) as the floor, in one run.

    .venv/bin/python bench/api.py [--seconds 10] [--connections 16]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--redis redis://127.0.0.1:6379/13]

Load comes from wrk (`apt-get install wrk`), one thread, so that it takes as little of
the machine as it can. The GET is `/api/v1/workspace` (a token checked, a small JSON);
`/api/v1/datasets` (a list read from the database) is shown beside it. The POST is
`/api/v1/system/ping {"reply": false}`: a `system.ping` event recorded in the database
and enqueued on Redis for the CPU and GPU workers (none run here: the queues are
dropped afterwards). Targets (the issue): >= 1,000 GET/s and >= 300 POST/s with
PostgreSQL on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import redis

from tunelab.settings import Settings

FLOOR_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def whoami(request):
    return JSONResponse({"workspace": "floor"})

app = Starlette(routes=[Route("/api/v1/workspace", whoami), Route("/api/v1/datasets", whoami),
                        Route("/api/v1/system/ping", whoami, methods=["POST"])])
"""
POST_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"reply": false}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def wrk(url: str, token: str, seconds: int, connections: int, script: Path | None) -> float:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-H", f"Authorization: Bearer {token}"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{errors.group(1)} requests failed:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def measure(base: str, token: str, args: argparse.Namespace, post: Path) -> dict[str, float]:
    def run(path: str, script: Path | None = None) -> float:
        return wrk(f"{base}{path}", token, args.seconds, args.connections, script)

    wrk(f"{base}/api/v1/workspace", token, 2, args.connections, None)  # warm up
    return {
        "GET /api/v1/workspace": run("/api/v1/workspace"),
        "GET /api/v1/datasets": run("/api/v1/datasets"),
        "POST /api/v1/system/ping": run("/api/v1/system/ping", post),
    }


def tunelab_api(
    database_url: str, redis_url: str, data: Path, args: argparse.Namespace, post: Path
) -> dict[str, float]:
    queue = f"bench-{secrets.token_hex(3)}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")},
        "TUNELAB_DATA_DIR": str(data),
        "TUNELAB_DATABASE_URL": database_url,
        "TUNELAB_REDIS_URL": redis_url,
        "TUNELAB_CPU_QUEUE": f"{queue}-cpu",
        "TUNELAB_GPU_QUEUE": f"{queue}-gpu",
    }
    tunelab = [sys.executable, "-m", "tunelab.cli"]
    token = subprocess.run(
        [*tunelab, "token", "create", "--workspace", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = free_port()
    env["TUNELAB_API_PORT"] = str(port)
    api = subprocess.Popen([*tunelab, "api"], env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        return measure(f"http://127.0.0.1:{port}", token, args, post)
    finally:
        api.terminate()
        api.wait(timeout=30)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"dramatiq:{queue}*"):
            client.delete(key)


def floor(args: argparse.Namespace, post: Path, tmp: Path) -> dict[str, float]:
    (tmp / "floor_app.py").write_text(FLOOR_APP)
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "floor_app:app", "--port", str(port)),
            *(
                "--workers",
                str(Settings().api_workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ),
        ],
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(tmp)},
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/api/v1/workspace")
        return measure(f"http://127.0.0.1:{port}", "none", args, post)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install wrk")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-api-") as name:
        tmp = Path(name)
        post = tmp / "post.lua"
        post.write_text(POST_SCRIPT)
        results["floor (bare Starlette)"] = floor(args, post, tmp)
        sqlite = f"sqlite:///{tmp / 'sqlite' / 'tunelab.db'}"
        results["tunelab, SQLite"] = tunelab_api(sqlite, args.redis, tmp / "sqlite", args, post)
        database = f"tunelab_bench_{secrets.token_hex(4)}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        try:
            pg = args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            results["tunelab, PostgreSQL"] = tunelab_api(
                f"{pg}/{database}", args.redis, tmp / "pg", args, post
            )
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    routes = list(next(iter(results.values())))
    print(f"\n{args.connections} connections, {args.seconds} s each, requests/s")
    print("| | " + " | ".join(routes) + " |\n|---|" + "---|" * len(routes))
    floor_figures = results["floor (bare Starlette)"]
    for name, figures in results.items():
        cells = [
            f"{figures[r]:,.0f}"
            + ("" if name.startswith("floor") else f" ({figures[r] / floor_figures[r]:.2f}x)")
            for r in routes
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
