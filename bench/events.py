"""Event latency and throughput of a running tunelab, beside a bare-Redis floor.

Run by hand against a running platform (`scripts/run.sh` in another terminal):

    .venv/bin/python bench/events.py [--seconds 30] [--rate 50]

It reads the API address, token and Redis URL from the data directory that
`tunelab up` writes (override with --api, --token, --redis-url). It measures:

1. latency from an accepted HTTP request (`POST /api/v1/system/ping`, stamped when
   the API accepts it) to the start of the actor that handles its event, at --rate
   requests/s for --seconds; floor: an LPUSH/BRPOP round trip through the same Redis
   at the same rate;
2. no-op event throughput of the CPU worker: --count no-op pings put straight onto
   its queue, timed until the queue is drained; floor: BRPOP of as many items;
3. HTTP intake: no-op pings accepted per second through the API (16 at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from dramatiq import Message

from tunelab.events.system import Ping, PingData
from tunelab.settings import get_settings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def paced_pings(api: str, token: str, rate: float, seconds: float) -> str:
    """Send pings at `rate`/s; returns the id of the first."""
    headers = {"authorization": f"Bearer {token}"}
    first = ""
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as client:
        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(client.post("/api/v1/system/ping")))
        responses = await asyncio.gather(*tasks)
    for response in responses:
        response.raise_for_status()
    first = responses[0].json()["event_id"]
    return first


def pong_latencies(api: str, token: str, after: str, expected: int) -> dict[str, list[float]]:
    headers = {"authorization": f"Bearer {token}"}
    latencies: dict[str, list[float]] = {"cpu": [], "gpu": []}
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        cursor = after
        while sum(map(len, latencies.values())) < expected and time.monotonic() < deadline:
            page = client.get(
                "/api/v1/events", params={"after": cursor, "type": "system.pong", "limit": "1000"}
            ).json()
            for event in reversed(page["items"]):
                latencies[event["data"]["worker"]].append(event["data"]["latency_ms"])
            if page["items"]:
                cursor = page["items"][0]["id"]
            elif not page["has_more"]:
                time.sleep(0.5)
    return latencies


def redis_round_trips(client: redis.Redis, rate: float, seconds: float) -> list[float]:
    key = f"bench:floor:{os.getpid()}"
    count = int(rate * seconds)
    latencies: list[float] = []

    def consume() -> None:
        for _ in range(count):
            _, sent = client.brpop([key], timeout=10)  # type: ignore[misc]
            latencies.append((time.time() - float(sent)) * 1000)

    consumer = threading.Thread(target=consume)
    consumer.start()
    start = time.perf_counter()
    for i in range(count):
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        client.lpush(key, repr(time.time()))
    consumer.join()
    return latencies


def worker_throughput(client: redis.Redis, queue: str, count: int) -> float:
    """Messages/s the CPU worker drains, the queue filled at once beforehand."""
    body = Ping(subject="bench", data=PingData(sent_at=time.time(), reply=False)).to_message()
    # What RedisBroker.enqueue's Lua script does, pipelined, so that the producer is
    # not what is measured.
    pipe = client.pipeline(transaction=True)
    for _ in range(count):
        redis_id = str(uuid.uuid4())
        message = Message(
            queue_name=queue,
            actor_name="answer_ping_cpu",
            args=(body,),
            kwargs={},
            options={"redis_message_id": redis_id},
        )
        pipe.hset(f"dramatiq:{queue}.msgs", redis_id, message.encode())
        pipe.rpush(f"dramatiq:{queue}", redis_id)
    start = time.perf_counter()
    pipe.execute()
    while client.hlen(f"dramatiq:{queue}.msgs") or client.llen(f"dramatiq:{queue}"):
        time.sleep(0.002)
    return count / (time.perf_counter() - start)


def redis_throughput(client: redis.Redis, count: int) -> float:
    key = f"bench:drain:{os.getpid()}"
    client.lpush(key, *range(count))
    start = time.perf_counter()
    for _ in range(count):
        client.brpop([key], timeout=10)
    return count / (time.perf_counter() - start)


async def http_intake(api: str, token: str, count: int, concurrency: int = 16) -> float:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as client:
        limit = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with limit:
                response = await client.post("/api/v1/system/ping", json={"reply": False})
                response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - start)


def main() -> None:
    settings = get_settings()
    data = settings.data_dir
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", default=f"http://{settings.api_host}:{settings.api_port}")
    parser.add_argument("--token", default=_read(data / "default-token"))
    parser.add_argument("--redis-url", default=settings.redis_url or _read(data / "redis.url"))
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url)

    print(f"latency: {args.rate:g} pings/s for {args.seconds:g} s ...", flush=True)
    first = asyncio.run(paced_pings(args.api, args.token, args.rate, args.seconds))
    sent = int(args.rate * args.seconds)
    pongs = pong_latencies(args.api, args.token, first, 2 * sent - 1)
    floor = redis_round_trips(client, args.rate, args.seconds)

    print(f"throughput: {args.count} no-op events ...", flush=True)
    worker_rate = worker_throughput(client, settings.cpu_queue, args.count)
    floor_rate = redis_throughput(client, args.count)
    intake = asyncio.run(http_intake(args.api, args.token, min(args.count, 2000)))

    rows: list[tuple[str, Any, Any, str]] = []
    for worker in ("cpu", "gpu"):
        values = pongs[worker]
        if values:
            rows.append(
                (
                    f"HTTP→{worker} actor p50 ms",
                    percentile(values, 50),
                    percentile(floor, 50),
                    f"n={len(values)}",
                )
            )
            rows.append(
                (f"HTTP→{worker} actor p99 ms", percentile(values, 99), percentile(floor, 99), "")
            )
    rows.append(("no-op events/s (CPU worker)", worker_rate, floor_rate, "floor: BRPOP"))
    rows.append(("HTTP pings accepted/s", intake, None, "16 concurrent"))
    print(f"\n{'measure':32} {'tunelab':>10} {'redis floor':>12} {'ratio':>8}")
    for name, ours, base, note in rows:
        ratio = f"{ours / base:.1f}x" if base else "-"
        base_text = f"{base:12.1f}" if base is not None else f"{'-':>12}"
        print(f"{name:32} {ours:10.1f} {base_text} {ratio:>8}  {note}")
    print(f"\nfloor round trip mean {statistics.mean(floor):.2f} ms over {len(floor)} pushes")


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


if __name__ == "__main__":
    main()
