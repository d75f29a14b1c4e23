"""Chats through tunelab's gateway beside the same requests sent straight to the model
server, in one run, taking turns.

    .venv/bin/python bench/chat.py [--tokens 32] [--requests 40] [--rounds 3]

Starts `tunelab up` on embedded defaults (a temporary data dir) with vLLM, deploys the
built-in base model as a service, so that the platform's own keeper starts its vLLM
server, and then measures each figure on both paths, direct first, then tunelab, round
after round:

1. latency of one request at a time (not streamed), p50 and p99 over --requests;
2. time to first token, streamed, p50 over --requests;
3. completion tokens/s with 8, 32 and 128 requests in flight (3 x that many requests).

Every request asks for exactly --tokens tokens (`ignore_eos`), greedy, on the same
prompt: the direct request carries the prompt the gateway renders for the chat.
Targets (the issue): throughput >= 0.9x direct at every concurrency; added p50 latency
and added TTFT <= 5 ms. Writes artifacts/bench-chat.json. Needs the vLLM environment
(scripts/vllm-venv.sh, or TUNELAB_VLLM_PYTHON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tunelab.serving.model_files import prompt_folder
from tunelab.serving.prompts import load_prompt_kit
from tunelab.settings import Settings
from tunelab.store.local import LocalStore

QUESTION = "What is the capital of the country with the most lakes?"
CONCURRENCY = (8, 32, 128)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def vllm_python() -> str:
    if os.environ.get("TUNELAB_VLLM_PYTHON"):
        return os.environ["TUNELAB_VLLM_PYTHON"]
    script = Path(__file__).parent.parent / "scripts" / "vllm-venv.sh"
    return subprocess.run(
        ["bash", str(script)], check=True, capture_output=True, text=True
    ).stdout.strip()


def wait(check: Callable[[], Any], what: str, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, sqlite3.Error):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


class Sides:
    """The two ways to ask the same question: straight to vLLM, and through tunelab."""

    def __init__(
        self, api: str, token: str, server: str, prompt: str, stops: list[str], tokens: int
    ):
        self.api, self.server, self.tokens = api, server, tokens
        self.client = httpx.AsyncClient(
            timeout=600, limits=httpx.Limits(max_connections=None, max_keepalive_connections=256)
        )
        self.direct_body = {
            "model": "base",
            "prompt": prompt,
            "max_tokens": tokens,
            "temperature": 0,
            "stop": stops,
            "ignore_eos": True,
            "add_special_tokens": False,
        }
        self.chat_body = {
            "model": "bench",
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        self.auth = {"authorization": f"Bearer {token}"}

    async def direct(self, stream: bool = False) -> tuple[float, float | None, int]:
        return await self._ask(f"{self.server}/v1/completions", self.direct_body, {}, stream)

    async def tunelab(self, stream: bool = False) -> tuple[float, float | None, int]:
        return await self._ask(f"{self.api}/v1/chat/completions", self.chat_body, self.auth, stream)

    async def _ask(
        self, url: str, body: dict[str, Any], headers: dict[str, str], stream: bool
    ) -> tuple[float, float | None, int]:
        """(seconds, seconds to the first token when streamed, completion tokens)."""
        started = time.perf_counter()
        if not stream:
            reply = await self.client.post(url, json=body, headers=headers)
            reply.raise_for_status()
            return time.perf_counter() - started, None, reply.json()["usage"]["completion_tokens"]
        first = None
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        made = 0
        async with self.client.stream("POST", url, json=streamed, headers=headers) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    made = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or [{}]
                if first is None and (
                    choices[0].get("text") or choices[0].get("delta", {}).get("content")
                ):
                    first = time.perf_counter() - started
        return time.perf_counter() - started, first, made


async def one_at_a_time(
    ask: Callable[[], Awaitable[tuple[float, float | None, int]]], n: int
) -> list[tuple[float, float | None, int]]:
    return [await ask() for _ in range(n)]


async def throughput(
    ask: Callable[[], Awaitable[tuple[float, float | None, int]]], in_flight: int
) -> float:
    gate = asyncio.Semaphore(in_flight)

    async def gated() -> int:
        async with gate:
            return (await ask())[2]

    started = time.perf_counter()
    made = await asyncio.gather(*(gated() for _ in range(in_flight * 3)))
    return sum(made) / (time.perf_counter() - started)


async def measure(sides: Sides, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, dict[str, list[float]]] = {"direct": {}, "tunelab": {}}

    def add(side: str, name: str, values: list[float]) -> None:
        figures[side].setdefault(name, []).extend(values)

    for side in ("direct", "tunelab"):  # warm both paths (connections, the prompt kit)
        await one_at_a_time(getattr(sides, side), 5)
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", flush=True)
        for side in ("direct", "tunelab"):
            ask = getattr(sides, side)
            add(side, "latency", [t for t, _, _ in await one_at_a_time(ask, args.requests)])
            streamed = await one_at_a_time(lambda ask=ask: ask(stream=True), args.requests)
            add(side, "ttft", [f for _, f, _ in streamed if f is not None])
        for in_flight in CONCURRENCY:
            for side in ("direct", "tunelab"):
                add(
                    side,
                    f"tokens/s@{in_flight}",
                    [await throughput(getattr(sides, side), in_flight)],
                )
    summary: dict[str, Any] = {}
    for side, named in figures.items():
        summary[side] = {
            "latency_p50_ms": statistics.median(named["latency"]) * 1000,
            "latency_p99_ms": percentile(named["latency"], 99) * 1000,
            "ttft_p50_ms": statistics.median(named["ttft"]) * 1000,
            **{k: statistics.median(v) for k, v in named.items() if k.startswith("tokens/s")},
            "tokens/s runs": {k: v for k, v in named.items() if k.startswith("tokens/s")},
        }
    return summary


def report(summary: dict[str, Any], tokens: int) -> None:
    d, t = summary["direct"], summary["tunelab"]
    rows = [
        ("latency p50, one at a time", "latency_p50_ms", "ms", "added <= 5 ms"),
        ("latency p99, one at a time", "latency_p99_ms", "ms", ""),
        ("time to first token p50, streamed", "ttft_p50_ms", "ms", "added <= 5 ms"),
        *[
            (f"completion tokens/s, {c} in flight", f"tokens/s@{c}", "/s", ">= 0.9x")
            for c in CONCURRENCY
        ],
    ]
    print(f"\n{tokens} tokens a request")
    print("| measure | direct | tunelab | tunelab / direct | target |\n|---|---|---|---|---|")
    for label, key, unit, target in rows:
        ratio = f"{t[key] / d[key]:.2f}x" + (
            f" (+{t[key] - d[key]:.1f} ms)" if unit == "ms" else ""
        )
        print(f"| {label} | {d[key]:.1f} {unit} | {t[key]:.1f} {unit} | {ratio} | {target} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-chat-") as tmp:
        data = Path(tmp)
        port = 18000 + os.getpid() % 1000
        env = {
            **os.environ,
            "TUNELAB_DATA_DIR": str(data),
            "TUNELAB_API_PORT": str(port),
            "TUNELAB_VLLM_PYTHON": vllm_python(),
            "TUNELAB_SERVING_ENGINE": "vllm",
        }
        env.pop("TUNELAB_DATABASE_URL", None)
        env.pop("TUNELAB_REDIS_URL", None)
        log = (data / "up.log").open("wb")
        up = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", "up"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api = f"http://127.0.0.1:{port}"
        try:
            wait(lambda: httpx.get(f"{api}/readyz").status_code == 200, "the platform")
            token = (data / "default-token").read_text().strip()
            auth = {"authorization": f"Bearer {token}"}
            httpx.post(
                f"{api}/api/v1/services",
                headers=auth,
                json={"name": "bench", "model": "tiny-llama"},
            ).raise_for_status()
            wait(
                lambda: (
                    httpx.get(f"{api}/api/v1/services/bench", headers=auth).json()["status"]
                    == "ready"
                ),
                "the service",
            )
            with sqlite3.connect(data / "tunelab.db") as db:
                (server,) = db.execute("SELECT url FROM model_servers").fetchone()
            settings = Settings(
                data_dir=data,
                model_cache=env.get("TUNELAB_MODEL_CACHE") and Path(env["TUNELAB_MODEL_CACHE"]),
            )
            kit = load_prompt_kit(
                prompt_folder(settings, LocalStore(data / "objects"), "builtin://tiny-llama")
            )
            prompt = kit.render([{"role": "user", "content": QUESTION}])
            sides = Sides(api, token, server, prompt.text, list(kit.stops), args.tokens)
            summary = asyncio.run(measure(sides, args))
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=120)
    summary["args"] = vars(args)
    summary["date"] = time.strftime("%Y-%m-%d")
    out = Path(__file__).parent.parent / "artifacts" / "bench-chat.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    report(summary, args.tokens)


if __name__ == "__main__":
    main()
