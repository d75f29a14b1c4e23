"""Attention that keeps packed samples apart without paying for each other.

transformers keeps packed samples apart with a block-diagonal mask over the whole row,
so attention still costs (sum of lengths)^2; with SDPA on a CPU that ate most of what
packing saves (measured: 53 ms of attention per step packed against 13 ms padded).
Given the samples' boundaries (`cu_seq_lens_q`, as flash-attention's varlen kernels
take them), this runs causal attention per sample: sum of length^2.

Which kernel does it, fastest first, is chosen once per process (`kernel()`):
- `flash-attn`: flash-attention's `flash_attn_varlen_func`, when the package is
  installed and the row is on a GPU in half precision;
- `torch-varlen`: torch's own `torch.nn.attention.varlen.varlen_attn` (flash-attention
  inside torch, CUDA, half precision), when this torch has it;
- `sdpa-loop`: one SDPA call per sample (a CPU, fp32, or neither kernel available).
Without boundaries (generation, a plain batch) it is transformers' SDPA, mask and all.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "tunelab_varlen"
HALF = (torch.float16, torch.bfloat16)

Varlen = Callable[..., Any]
"""(q, k, v as (tokens, heads, dim), boundaries, longest sample, scale, window) →
(tokens, heads, dim): causal attention within each sample, over the last `window`
tokens when it is set (a sliding-window model's)."""


def _flash_attn() -> Varlen | None:
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func

    def run(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int,
        scale: float, window: int | None,
    ) -> Any:  # fmt: skip
        return flash_attn_varlen_func(
            q, k, v, cu, cu, longest, longest, softmax_scale=scale, causal=True,
            window_size=(window - 1, 0) if window else (-1, -1),
        )  # fmt: skip

    return run


def _torch_varlen() -> Varlen | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None

    def run(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int,
        scale: float, window: int | None,
    ) -> Any:  # fmt: skip
        return varlen_attn(
            q, k, v, cu, cu, longest, longest, scale=scale,
            window_size=(window - 1, 0) if window else (-1, 0),
            enable_gqa=k.shape[1] != q.shape[1],
        )  # fmt: skip

    return run


@cache
def kernels() -> dict[str, Varlen]:
    """The varlen kernels this process has, fastest first."""
    found = {"flash-attn": _flash_attn(), "torch-varlen": _torch_varlen()}
    return {name: run for name, run in found.items() if run is not None}


def kernel(query: torch.Tensor) -> tuple[str, Varlen | None]:
    """Which kernel runs attention for this query: the fastest there is for its device
    and dtype, else the per-sample SDPA loop (None)."""
    if query.device.type != "cuda" or query.dtype not in HALF:
        return "sdpa-loop", None
    for name, run in kernels().items():
        return name, run
    return "sdpa-loop", None


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    bounds = kwargs.pop("cu_seq_lens_q", None)
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("softcap"):
        # Neither SDPA nor torch's kernel caps scores: better refused than wrong.
        raise NotImplementedError(
            "this model caps its attention scores (softcap); packed training of it "
            "needs flash-attn's kernels on a GPU"
        )
    window = kwargs.get("sliding_window")
    _, run = kernel(query)
    if run is not None:
        # (1, heads, tokens, dim) → (tokens, heads, dim), as varlen kernels take them.
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
        cu = bounds.to(device=query.device, dtype=torch.int32)
        longest = int(kwargs.get("max_length_q") or (cu[1:] - cu[:-1]).max())
        scale = kwargs.get("scaling") or getattr(module, "scaling", q.shape[-1] ** -0.5)
        out = run(q, k, v, cu, longest, scale, window)
        return out.unsqueeze(0), None  # (1, tokens, heads, dim), as transformers wants
    edges = bounds.tolist()
    outputs = [
        sdpa_attention_forward(
            module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
            _window_mask(e - s, window, query.device), **kwargs,
        )[0]
        for s, e in itertools.pairwise(edges)
    ]  # fmt: skip
    return torch.cat(outputs, dim=1), None


def _window_mask(length: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """None (plain causal) or, for a sliding-window model's sample longer than its
    window, the causal mask over each token's last `window` tokens."""
    if not window or length <= window:
        return None
    ones = torch.ones(length, length, dtype=torch.bool, device=device)
    return (ones.tril() & ~ones.tril(-window))[None, None]


def packed_or_sdpa_mask(batch_size: int, *args: Any, **kwargs: Any) -> torch.Tensor | None:
    """No mask for a packed training row (one row, no padding): the kernels above keep
    its samples apart from their boundaries, and a block-diagonal mask over the row,
    which transformers would build from the position ids, costs (sum of lengths)^2.
    Padded batches (generation) get transformers' SDPA mask."""
    if batch_size == 1 and kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(batch_size, *args, **kwargs)


AttentionInterface.register(NAME, varlen_sdpa_forward)
AttentionMaskInterface.register(NAME, packed_or_sdpa_mask)
