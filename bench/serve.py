"""Serving speed on this machine: tunelab's vLLM path beside plain transformers.

    .venv/bin/python bench/serve.py [--tokens 64] [--loads 20]

Side by side in one run, on the built-in tiny model (built once into the model cache):

1. generation throughput (completion tokens/s) of 16 and 64 concurrent requests
   through a vLLM server started exactly as tunelab's keeper starts one (same process
   class, flags and environment), against transformers `generate` on the same prompts
   batched 16 or 64 at a time; every request makes exactly --tokens tokens;
2. adapter hot-load latency, p50 and p99 over --loads loads (`/v1/load_lora_adapter`
   of a rank-16 adapter on all linear layers, unloaded between loads);
3. throughput of 16 concurrent requests spread over three active adapters, against the
   same 16 requests to the base model.

Needs the vLLM environment (scripts/vllm-venv.sh, or TUNELAB_VLLM_PYTHON).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.serving.served import SERVED_NAME
from tunelab.settings import Settings
from tunelab.synthetic import qa_pairs
from tunelab.training.basemodel import ensure_tiny_base
from tunelab.training.template import render_prompt
from tunelab.workers.gpu.serving.process import ServerProcess


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def prompts(tokenizer: object, count: int) -> list[str]:
    return [render_prompt(tokenizer, q) for q, _ in qa_pairs(count, seed=31)]


async def vllm_throughput(url: str, texts: list[str], tokens: int, models: list[str]) -> float:
    async def one(client: httpx.AsyncClient, i: int, text: str) -> int:
        reply = await client.post(
            f"{url}/v1/completions",
            json={
                "model": models[i % len(models)],
                "prompt": text,
                "max_tokens": tokens,
                "temperature": 0,
                "ignore_eos": True,  # every request makes exactly `tokens` tokens
                "add_special_tokens": False,
            },
        )
        reply.raise_for_status()
        return int(reply.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=600) as client:
        await one(client, 0, texts[0])  # warm-up
        start = time.perf_counter()
        made = await asyncio.gather(*(one(client, i, t) for i, t in enumerate(texts)))
        return sum(made) / (time.perf_counter() - start)


def transformers_throughput(model_dir: Path, texts: list[str], tokens: int) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = {
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,  # the built-in model's config turns the KV-cache off (training)
    }
    with torch.inference_mode():
        model.generate(**tokenizer(texts[:2], return_tensors="pt", padding=True), max_new_tokens=2)
        start = time.perf_counter()
        out = model.generate(**batch, **kwargs)
        elapsed = time.perf_counter() - start
    made = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return made / elapsed


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights="gaussian",
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


def vllm_python() -> Path:
    if os.environ.get("TUNELAB_VLLM_PYTHON"):
        return Path(os.environ["TUNELAB_VLLM_PYTHON"])
    made = subprocess.run(
        ["bash", str(Path(__file__).parent.parent / "scripts" / "vllm-venv.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(made.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--loads", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        cache = os.environ.get("TUNELAB_MODEL_CACHE", Path.home() / ".cache/tunelab/models")
        settings = Settings(data_dir=Path(tmp), model_cache=Path(cache), vllm_python=vllm_python())
        model_dir = ensure_tiny_base(settings.model_cache_dir, settings.data_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        adapters = [make_adapter(model_dir, Path(tmp) / f"adapter-{i}", i) for i in range(3)]
        server = ServerProcess(settings, "vllm", model_dir, Path(tmp) / "server")
        started = time.perf_counter()
        server.start()
        print(f"vLLM server up in {time.perf_counter() - started:.0f} s")
        try:
            print(f"\n1. throughput, {args.tokens} tokens per request (completion tokens/s)")
            print(f"{'concurrent':>10} {'tunelab vLLM':>13} {'transformers':>13} {'ratio':>7}")
            for count in (16, 64):
                texts = prompts(tokenizer, count)
                ours = asyncio.run(vllm_throughput(server.url, texts, args.tokens, [SERVED_NAME]))
                theirs = transformers_throughput(model_dir, texts, args.tokens)
                print(f"{count:>10} {ours:>13.0f} {theirs:>13.0f} {ours / theirs:>6.2f}x")

            loads = []
            for i in range(args.loads):
                started = time.perf_counter()
                server.load_adapter("probe", adapters[i % 3])
                loads.append((time.perf_counter() - started) * 1000)
                server.unload_adapter("probe")
            print(f"\n2. adapter hot-load over {args.loads} loads")
            print(f"   p50 {statistics.median(loads):.0f} ms, p99 {percentile(loads, 99):.0f} ms")

            names = [f"adapter-{i}" for i in range(3)]
            for name, path in zip(names, adapters, strict=True):
                server.load_adapter(name, path)
            texts = prompts(tokenizer, 16)
            base = asyncio.run(vllm_throughput(server.url, texts, args.tokens, [SERVED_NAME]))
            three = asyncio.run(vllm_throughput(server.url, texts, args.tokens, names))
            print("\n3. 16 concurrent requests (completion tokens/s)")
            print(f"   base model {base:.0f}, over three adapters {three:.0f}: {three / base:.2f}x")
        finally:
            server.close()


if __name__ == "__main__":
    main()
