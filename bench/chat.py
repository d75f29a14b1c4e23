"""Chats through tunelab's gateway beside the same requests sent straight to the model
server, in one run, taking turns.

    .venv/bin/python bench/chat.py [--tokens 32] [--requests 20] [--rounds 5]

Starts `tunelab up` on embedded defaults (a temporary data dir) with vLLM, deploys the
built-in base model as a service, so that the platform's own keeper starts its vLLM
server, and then measures each figure on both paths, direct first, then tunelab, round
after round:

1. latency of one request at a time (not streamed), p50 and p99 over --requests x
   --rounds requests each side, the sides taking turns request by request;
2. time to first token, streamed, the same way;
3. completion tokens/s with 8, 32 and 128 requests in flight (3 x that many requests),
   --rounds times each, the sides taking turns.

The added latency is the median of the pairwise differences, the throughput ratio the
median of the per-round ratios: the machine's load drifts more than the gateway costs.

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
import psutil

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


async def pairs(sides: Sides, n: int, stream: bool) -> dict[str, list[tuple[float, float | None]]]:
    """n requests on each side, one at a time, the two sides taking turns (and turns in
    who goes first), so that both see the same machine."""
    found: dict[str, list[tuple[float, float | None]]] = {"direct": [], "tunelab": []}
    for i in range(n):
        for side in ("direct", "tunelab") if i % 2 == 0 else ("tunelab", "direct"):
            total, first, _ = await getattr(sides, side)(stream=stream)
            found[side].append((total, first))
    return found


def cpu_seconds(up: int) -> dict[str, float]:
    """CPU time so far of the platform's API processes and of its vLLM server's."""
    totals = {"api": 0.0, "vllm": 0.0}
    for process in psutil.Process(up).children(recursive=True):
        try:
            command = " ".join(process.cmdline())
            lineage = [command] + [" ".join(p.cmdline()) for p in process.parents()]
            times = process.cpu_times()
        except psutil.Error:
            continue
        if "vllm" in command or process.name().startswith("VLLM"):
            totals["vllm"] += times.user + times.system
        elif any("tunelab.cli api" in c for c in lineage):
            totals["api"] += times.user + times.system
    return totals


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


async def measure(sides: Sides, args: argparse.Namespace, up: int) -> dict[str, Any]:
    await pairs(sides, 5, stream=False)  # warm both paths (connections, the prompt kit)
    latency = await pairs(sides, args.requests * args.rounds, stream=False)
    streamed = await pairs(sides, args.requests * args.rounds, stream=True)
    rates: dict[int, dict[str, list[float]]] = {
        c: {"direct": [], "tunelab": []} for c in CONCURRENCY
    }
    cpu = {"direct": {"api": 0.0, "vllm": 0.0}, "tunelab": {"api": 0.0, "vllm": 0.0}}
    requests = {"direct": 0, "tunelab": 0}
    for round_ in range(args.rounds):
        print(f"throughput round {round_ + 1}/{args.rounds}", flush=True)
        for in_flight in CONCURRENCY:
            order = ("direct", "tunelab") if round_ % 2 == 0 else ("tunelab", "direct")
            for side in order:
                before = cpu_seconds(up)
                rates[in_flight][side].append(await throughput(getattr(sides, side), in_flight))
                after = cpu_seconds(up)
                for part in ("api", "vllm"):
                    cpu[side][part] += after[part] - before[part]
                requests[side] += in_flight * 3
    summary: dict[str, Any] = {}
    for side in ("direct", "tunelab"):
        totals = [t for t, _ in latency[side]]
        firsts = [f for _, f in streamed[side] if f is not None]
        summary[side] = {
            "latency_p50_ms": statistics.median(totals) * 1000,
            "latency_p99_ms": percentile(totals, 99) * 1000,
            "ttft_p50_ms": statistics.median(firsts) * 1000,
            **{f"tokens/s@{c}": statistics.median(r[side]) for c, r in rates.items()},
        }
    summary["added"] = {
        "latency_p50_ms": 1000
        * statistics.median(
            t - d for (t, _), (d, _) in zip(latency["tunelab"], latency["direct"], strict=True)
        ),
        "ttft_p50_ms": 1000
        * statistics.median(
            t - d
            for (_, t), (_, d) in zip(streamed["tunelab"], streamed["direct"], strict=True)
            if t is not None and d is not None
        ),
        **{
            f"tokens/s@{c}": statistics.median(
                t / d for t, d in zip(r["tunelab"], r["direct"], strict=True)
            )
            for c, r in rates.items()
        },
    }
    summary["runs"] = {f"tokens/s@{c}": r for c, r in rates.items()}
    # CPU is what this machine runs short of: the gateway's share of it bounds its cost.
    summary["cpu_ms_per_request"] = {
        side: {part: 1000 * used / requests[side] for part, used in parts.items()}
        for side, parts in cpu.items()
    }
    return summary


def report(summary: dict[str, Any], tokens: int) -> None:
    d, t, added = summary["direct"], summary["tunelab"], summary["added"]
    print(f"\n{tokens} tokens a request; added: median of the pairwise differences or ratios")
    print("| measure | direct | tunelab | added / ratio | target |\n|---|---|---|---|---|")
    for label, key in (
        ("latency p50, one at a time", "latency_p50_ms"),
        ("time to first token p50, streamed", "ttft_p50_ms"),
    ):
        print(f"| {label} | {d[key]:.1f} ms | {t[key]:.1f} ms | +{added[key]:.1f} ms | <= 5 ms |")
    key = "latency_p99_ms"
    print(f"| latency p99, one at a time | {d[key]:.1f} ms | {t[key]:.1f} ms | | |")
    for c in CONCURRENCY:
        key = f"tokens/s@{c}"
        print(
            f"| completion tokens/s, {c} in flight | {d[key]:.0f} | {t[key]:.0f} | "
            f"{added[key]:.2f}x | >= 0.9x |"
        )
    cpu = summary["cpu_ms_per_request"]
    print(
        f"\nCPU per request in the throughput runs: vLLM {cpu['direct']['vllm']:.1f} ms direct, "
        f"{cpu['tunelab']['vllm']:.1f} ms through tunelab; the API (gateway) "
        f"{cpu['tunelab']['api']:.2f} ms ({cpu['direct']['api']:.2f} ms idle beside direct runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
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
            summary = asyncio.run(measure(sides, args, up.pid))
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
