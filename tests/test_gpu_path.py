"""What the GPU path changed, checked on the CPU: the chunked loss equals the whole
one (values and gradients), gradient checkpointing changes memory and not results, a
packed row builds no mask, the kernel choice falls back where no varlen kernel can
run, and bench/gpu_check.py's smoke run (which CI runs so that it cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.params import Parameters
from tunelab.training import attention
from tunelab.training.model_io import prepare_model
from tunelab.training.objectives import answer_nll
from tunelab.training.packing import pack
from tunelab.training.template import IGNORE, Sample

ROOT = Path(__file__).resolve().parents[1]


def tiny(peft: bool, **params: object) -> torch.nn.Module:
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    parameters = Parameters(peft=peft, lora_dropout=0.0, **params)  # type: ignore[arg-type]
    return prepare_model(model, parameters, torch.device("cpu"))


def batch() -> object:
    rows = []
    for length in (9, 23, 14):
        ids = [(7 * i + length) % 90 + 3 for i in range(length)]
        rows.append(Sample(ids, [IGNORE] * 3 + ids[3:]))
    return pack(rows)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("peft", [True, False])
def test_the_chunked_loss_equals_the_whole_one_and_so_do_its_gradients(peft: bool) -> None:
    model, packed = tiny(peft), batch()
    whole = answer_nll(model, packed, chunk=10**6)  # one chunk: logits made whole
    whole.backward()
    expected = grads(model)
    model.zero_grad()
    chunked = answer_nll(model, packed, chunk=7)  # 46 tokens in 7 chunks, the last short
    chunked.backward()
    assert torch.allclose(chunked, whole, rtol=1e-5)
    got = grads(model)
    assert got.keys() == expected.keys() and got
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-6), name


def test_gradient_checkpointing_changes_memory_not_results() -> None:
    plain, checkpointed = tiny(False), tiny(False, gradient_checkpointing=True)
    assert checkpointed.is_activation_checkpointing and not plain.is_activation_checkpointing
    plain.train(), checkpointed.train()
    for model in (plain, checkpointed):
        answer_nll(model, batch()).backward()
    for name, grad in grads(plain).items():
        assert torch.allclose(grads(checkpointed)[name], grad, rtol=1e-5, atol=1e-7), name
    # A LoRA model checkpoints too: its frozen embeddings' output asks for a gradient.
    lora = tiny(True, gradient_checkpointing=True)
    lora.train()
    answer_nll(lora, batch()).backward()
    assert grads(lora) and all("lora_" in name for name in grads(lora))


def test_a_packed_row_builds_no_mask_and_a_padded_batch_gets_sdpa_s() -> None:
    assert attention.packed_or_sdpa_mask(1, q_length=40, kv_length=40) is None
    padded = attention.packed_or_sdpa_mask(
        2, q_length=4, kv_length=4, attention_mask=torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    )
    assert padded is not None and padded.shape[-2:] == (4, 4)


def test_on_the_cpu_or_in_fp32_the_kernel_is_the_per_sample_loop() -> None:
    query = torch.zeros(1, 4, 8, 16)
    assert attention.kernel(query) == ("sdpa-loop", None)
    assert attention.kernel(query.to(torch.bfloat16)) == ("sdpa-loop", None)
    # torch 2.13 carries a varlen flash kernel of its own, used on CUDA in half precision.
    assert "torch-varlen" in attention.kernels()


def test_the_gpu_check_runs_its_smoke_shape_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert [r["mode"] for r in figures["results"]] == ["lora", "full"]
    for result in figures["results"]:
        for side in ("tunelab", "baseline"):
            assert result[side]["tokens_per_second"] > 0 and result[side]["peak_memory_mb"] > 0
            assert len(result[side]["first_losses"]) == 5
        # The same samples in the same order, packed or padded: the same losses.
        assert result["loss_max_relative_difference"] < 1e-3, result
    assert "tunelab/baseline" in done.stdout


def test_a_sliding_window_model_attends_to_its_window_in_a_packed_row() -> None:
    assert attention._window_mask(3, 4, torch.device("cpu")) is None  # shorter: causal
    mask = attention._window_mask(5, 2, torch.device("cpu"))
    assert mask is not None
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],
    ]


def test_attention_softcapping_is_refused_rather_than_ignored() -> None:
    query = torch.zeros(1, 2, 6, 8)
    with pytest.raises(NotImplementedError, match="softcap"):
        attention.varlen_sdpa_forward(
            torch.nn.Module(), query, query, query, None,
            cu_seq_lens_q=torch.tensor([0, 6]), softcap=30.0,
        )  # fmt: skip
