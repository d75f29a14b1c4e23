"""The GPU path at full speed: tunelab's trainer against a plain Hugging Face `Trainer`
with PEFT and per-batch padding, on a 7B-shaped model, side by side.

    .venv/bin/python bench/gpu_check.py                 # one GPU (about 6 minutes on an H200)
    .venv/bin/python bench/gpu_check.py --smoke         # a tiny shape on the CPU (CI runs it)

The model is Llama-2-7B's shape (its config, random weights: nothing is downloaded),
in bf16 on the GPU. Two modes, each side in a process of its own (so that its peak
memory is its own), on the same samples in the same order:

- `lora`: LoRA r=16 on every linear layer, the base's weights frozen in bf16;
- `full`: every weight trained (fp32 master weights, bf16 autocast), on the same
  shape with half its layers (16: 3.4B parameters), which fits one GPU with AdamW.

The samples are packed variable-length ones drawn like a real Q&A set: lengths
log-normal around 256 tokens, cut to 64-1,024, the first 30% of each a prompt that
is not trained on. tunelab packs each batch into one row and runs per-sample causal
attention (tunelab.training.attention: flash-attention's or torch's varlen kernel on
CUDA); the baseline pads each batch to its longest sample.

Reported, for each mode and side:
- real tokens/s: the tokens of the samples (no padding) over the timed steps (the first
  two are warm-up and not timed);
- MFU: model FLOPs per real token over the device's peak (--peak-tflops, the H200's
  dense bf16 989 by default), counted two ways: 6N (forward 2N, backward 4N, N every
  parameter, frozen ones too) and, for LoRA, 4N (a frozen weight needs no weight
  gradient), each plus attention's 6 x layers x hidden x (causal half of the sample's
  length) per token, fwd+bwd;
- peak memory: torch.cuda.max_memory_allocated (on the CPU, the process's peak RSS);
- loss parity: each of the first steps' losses (mean NLL over answer tokens) beside the
  baseline's, and the largest relative difference.

It writes one JSON of figures (--out) and prints a table with the targets: LoRA >= 40%
MFU (6N with attention), >= 1.5x the baseline's tokens/s at <= 0.8x its peak memory;
full >= 35% MFU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
SMOKE = {
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
}
TARGETS = {"lora_mfu": 0.40, "lora_speed": 1.5, "lora_memory": 0.8, "full_mfu": 0.35}
PARITY_STEPS = 5
WARMUP_STEPS = 2


def shape(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    config = dict(SMOKE if args.smoke else LLAMA2_7B)
    if mode == "full" and not args.smoke:
        config["num_hidden_layers"] = 16  # fits one GPU with AdamW's states
    return config


def sample_lengths(count: int, smoke: bool, seed: int) -> list[int]:
    """Lengths like a Q&A set's: log-normal around 256 tokens, cut to 64-1,024."""
    rng = random.Random(seed)
    low, high, median = (8, 64, 24) if smoke else (64, 1024, 256)
    return [
        min(high, max(low, round(rng.lognormvariate(math.log(median), 0.6)))) for _ in range(count)
    ]


def samples(args: argparse.Namespace, vocab: int) -> list[Any]:
    from tunelab.training.template import IGNORE, Sample

    rng = random.Random(args.seed)
    made = []
    for length in sample_lengths(args.steps * args.batch_size, args.smoke, args.seed):
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = max(1, int(length * 0.3))
        made.append(Sample(ids, [IGNORE] * prompt + ids[prompt:]))
    return made


def parameters(args: argparse.Namespace, mode: str) -> Any:
    from tunelab.params import Parameters

    return Parameters(
        peft=mode == "lora",
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.0,
        learning_rate=1e-4 if mode == "lora" else 1e-5,
        epochs=1,
        batch_size=args.batch_size,
        block_size=1024 if not args.smoke else 64,
        warmup_ratio=0.0,
        weight_decay=0.0,
        scheduler="constant",
        seed=args.seed,
        checkpoint_every=10**6,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def build(args: argparse.Namespace, mode: str, device: Any) -> Any:
    """The random-weight model of the shape, as tunelab's loader prepares a base."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.training.model_io import frozen_dtype, prepare_model

    config = LlamaConfig(**shape(args, mode))
    params = parameters(args, mode)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(frozen_dtype(params, device))
    return prepare_model(model, params, device)


def peak_memory_mb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_tunelab(args: argparse.Namespace, mode: str, device: Any) -> dict[str, Any]:
    from tunelab.training.trainer import Trainer, TrainingData

    model = build(args, mode, device)
    data = TrainingData(samples(args, model.config.vocab_size))
    times: list[float] = []
    trainer = Trainer(
        model,
        parameters(args, mode),
        data,
        device,
        on_step=lambda _: (_sync(device), times.append(time.perf_counter())),
    )
    times.append(time.perf_counter())
    result = trainer.run()
    return {
        "losses": [p.loss for p in result.history],
        "times": times,
        "peak_mb": peak_memory_mb(device),
        **_counts(model),
    }


def run_baseline(args: argparse.Namespace, mode: str, device: Any) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    from tunelab.training.packing import epoch_order
    from tunelab.training.template import IGNORE

    model = build(args, mode, device)
    made = samples(args, model.config.vocab_size)
    order = epoch_order(len(made), args.seed, 0)  # tunelab's order: the same batches
    rows = [
        {
            "input_ids": made[i].input_ids,
            "attention_mask": [1] * len(made[i].input_ids),
            "labels": made[i].labels,
        }
        for i in order
    ]

    class Pad:
        pad_token_id = 0
        padding_side = "right"

        def pad(self, features: Any, **kwargs: Any) -> Any:
            longest = max(len(f["input_ids"]) for f in features)
            return {
                key: torch.tensor([f[key] + [0] * (longest - len(f[key])) for f in features])
                for key in ("input_ids", "attention_mask")
            }

    collate = DataCollatorForSeq2Seq(
        Pad(), padding="longest", label_pad_token_id=IGNORE, return_tensors="pt"
    )
    losses: list[float] = []
    times: list[float] = []

    class Record(TrainerCallback):  # type: ignore[misc]
        def on_log(self, a: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if "loss" in (kwargs.get("logs") or {}):
                losses.append(float(kwargs["logs"]["loss"]))

        def on_step_end(self, a: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync(device)
            times.append(time.perf_counter())

    params = parameters(args, mode)
    with tempfile.TemporaryDirectory() as workdir:
        training = TrainingArguments(
            output_dir=workdir,
            per_device_train_batch_size=params.batch_size,
            num_train_epochs=1,
            learning_rate=params.learning_rate,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=params.max_grad_norm,
            optim="adamw_torch",
            seed=args.seed,
            bf16=device.type == "cuda",
            use_cpu=device.type == "cpu",
            logging_strategy="steps",
            logging_steps=1,
            eval_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            gradient_checkpointing=bool(args.gradient_checkpointing),
        )

        class InOrder(HFTrainer):  # type: ignore[misc]
            def _get_train_sampler(self, *a: Any, **k: Any) -> Any:
                return torch.utils.data.SequentialSampler(rows)

        trainer = InOrder(
            model=model,
            args=training,
            train_dataset=rows,
            data_collator=collate,
            callbacks=[Record()],
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # neither side prints per step
        times.append(time.perf_counter())
        trainer.train()
    return {"losses": losses, "times": times, "peak_mb": peak_memory_mb(device), **_counts(model)}


def _counts(model: Any) -> dict[str, int]:
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1) if not args.smoke else 1)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    run = run_tunelab if args.side == "tunelab" else run_baseline
    figures = run(args, args.mode, device)
    figures["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    Path(args.child_out).write_text(json.dumps(figures))


def attention_flops_per_token(config: dict[str, Any], lengths: list[int]) -> float:
    """Causal attention's FLOPs per token, forward and backward: QK^T and AV are each
    2 x hidden x (the tokens before it) per layer forward, twice that backward."""
    seen = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
    return 6 * 2 * config["num_hidden_layers"] * config["hidden_size"] * seen


def summarize(
    args: argparse.Namespace, mode: str, sides: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    config = shape(args, mode)
    lengths = sample_lengths(args.steps * args.batch_size, args.smoke, args.seed)
    real_tokens_per_step = [
        sum(lengths[i] for i in batch)
        for batch in _batches(len(lengths), args.batch_size, args.seed)
    ]
    attention = attention_flops_per_token(config, lengths)
    out: dict[str, Any] = {"mode": mode, "shape": config}
    for side, figures in sides.items():
        times = figures["times"]
        timed = slice(WARMUP_STEPS, len(times) - 1)
        seconds = times[-1] - times[WARMUP_STEPS]
        tokens = sum(real_tokens_per_step[timed])
        rate = tokens / seconds if seconds > 0 else 0.0
        n = figures["parameters"]
        row = {
            "tokens_per_second": rate,
            "peak_memory_mb": figures["peak_mb"],
            "parameters": n,
            "trainable": figures["trainable"],
            "device": figures["device"],
            "first_losses": figures["losses"][:PARITY_STEPS],
        }
        if figures["device"] != "cpu":
            peak = args.peak_tflops * 1e12
            row["mfu_6n_attention"] = rate * (6 * n + attention) / peak
            row["mfu_6n"] = rate * 6 * n / peak
            if mode == "lora":
                row["mfu_4n_attention"] = rate * (4 * n + attention) / peak
        out[side] = row
    ours, theirs = out["tunelab"], out["baseline"]
    out["speed_ratio"] = ours["tokens_per_second"] / max(theirs["tokens_per_second"], 1e-9)
    out["memory_ratio"] = ours["peak_memory_mb"] / max(theirs["peak_memory_mb"], 1e-9)
    pairs = list(zip(ours["first_losses"], theirs["first_losses"], strict=False))
    out["loss_max_relative_difference"] = max(
        (abs(a - b) / max(abs(b), 1e-9) for a, b in pairs), default=None
    )
    return out


def _batches(count: int, batch_size: int, seed: int) -> list[list[int]]:
    from tunelab.training.packing import epoch_order

    order = epoch_order(count, seed, 0)
    return [order[i : i + batch_size] for i in range(0, count, batch_size)]


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'mode':<5} {'side':<9} {'tok/s':>10} {'MFU 6N+att':>10} {'peak MB':>10}"]
    for result in results:
        for side in ("tunelab", "baseline"):
            row = result[side]
            mfu = row.get("mfu_6n_attention")
            lines.append(
                f"{result['mode']:<5} {side:<9} {row['tokens_per_second']:>10.1f} "
                f"{(f'{mfu:.1%}' if mfu is not None else 'n/a'):>10} "
                f"{row['peak_memory_mb']:>10.0f}"
            )
        parity = result["loss_max_relative_difference"]
        lines.append(
            f"      tunelab/baseline: {result['speed_ratio']:.2f}x tokens/s, "
            f"{result['memory_ratio']:.2f}x peak memory, first {PARITY_STEPS} losses within "
            f"{parity:.2%}"
            if parity is not None
            else "      (no losses to compare)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--out", default="bench/gpu-check.json")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (8 if args.smoke else 24)
    args.batch_size = args.batch_size or (4 if args.smoke else 16)
    if args.side:
        child(args)
        return
    results = []
    for mode in args.modes.split(","):
        sides = {}
        for side in ("tunelab", "baseline"):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [sys.executable, __file__, *sys.argv[1:], "--side", side,
                           "--mode", mode, "--child-out", out.name]  # fmt: skip
                subprocess.run(command, check=True)
                sides[side] = json.loads(Path(out.name).read_text())
        results.append(summarize(args, mode, sides))
    Path(args.out).write_text(json.dumps({"targets": TARGETS, "results": results}, indent=2))
    print(table(results))
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
