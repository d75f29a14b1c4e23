"""What a training step minimises: the answers' negative log-likelihood (SFT), or the
DPO loss on preference pairs. The loop in `trainer.py` is the same for both; an
objective packs its items into a batch, says how many units each counts for (the loss is
a sum over the global step's units: answer tokens for SFT, pairs for DPO) and computes
the batch's summed loss with the statistics progress reports.

DPO (Rafailov et al., 2023) compares each answer's log-likelihood under the model being
trained with its log-likelihood under the reference, the model before training. The
reference log-likelihoods are computed once, before the first step, with the weights
as they start, so no second copy of the model is held: for a new LoRA adapter that is
the base itself (its adapter adds exactly zero), for a continued one the fine-tuned
model DPO starts from (the usual SFT-then-DPO path), for full fine-tuning the starting
weights. Checkpoints keep them, so a resumed task compares against the same reference.
The loss and rewards are TRL's (`DPOTrainer._compute_loss`): `sigmoid`, or `ipo` on
length-averaged log-ratios, and an optional SFT term on the chosen answer (TRL's `sft`
loss type), checked against TRL in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunelab.params import Parameters
from tunelab.preferences import Preference
from tunelab.training.packing import Batch, pack
from tunelab.training.template import IGNORE, Sample, Truncation, encode_conversation

Stats = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Pair:
    """A preference pair, encoded: the prompt with the chosen answer, then with the
    rejected one; `reference` is their log-likelihoods under the reference model."""

    chosen: Sample
    rejected: Sample
    reference: tuple[float, float] = (0.0, 0.0)

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    def without_targets(self) -> Pair:
        return Pair(self.chosen.without_targets(), self.rejected.without_targets())


def encode_preferences(
    tokenizer: Any, pairs: Sequence[Preference], block_size: int, truncation: Truncation
) -> list[Pair]:
    return [
        Pair(
            encode_conversation(tokenizer, p.conversation(p.chosen), block_size, truncation),
            encode_conversation(tokenizer, p.conversation(p.rejected), block_size, truncation),
        )
        for p in pairs
    ]


def _inputs(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {
        "input_ids": batch.input_ids.to(device),
        "position_ids": batch.position_ids.to(device),
        "cu_seq_lens_q": batch.cu_seq_lens.to(device),
        # Known here, on the host: a varlen kernel needs it and would else ask the
        # device for it in every layer.
        "max_length_q": int(batch.cu_seq_lens.diff().max()),
        "use_cache": False,
    }


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    device = next(model.parameters()).device
    logits: torch.Tensor = model(**_inputs(batch, device)).logits
    return logits


CHUNK_TOKENS = 4096
"""Tokens whose logits the chunked loss makes at once: 4,096 x a 32k vocabulary in
fp32 is 512 MB, where a packed row of 16k tokens would make 2 GB, and keep it for the
backward pass."""
WHOLE_LOGITS = 1 << 24
"""Up to this many logits (64 MB in fp32) a row's are made whole: chunking them would
cost more than it saves."""


def _trunk_and_head(model: torch.nn.Module) -> tuple[Any, torch.nn.Linear] | None:
    """A causal LM's decoder and output head (under a peft wrapper too), when its logits
    are the head's output and nothing more (no soft-capping or scaling after it). None
    under a DDP or DeepSpeed engine: their forward is what synchronises gradients (and
    gathers ZeRO-3's partitioned weights), so the model must be called through it."""
    if hasattr(model, "module"):
        return None
    base: Any = model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    trunk, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    config = getattr(base, "config", None)
    if trunk is None or type(head) is not torch.nn.Linear or config is None:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", 1) != 1:
        return None
    return trunk, head


def _chunk_nll(
    hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")


def answer_nll(model: torch.nn.Module, batch: Batch, chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """The summed negative log-likelihood of the batch's answer tokens. Where the row's
    logits would be large they are made a chunk of tokens at a time and made again in
    the backward pass (activation checkpointing), so the whole row's never exist."""
    parts = _trunk_and_head(model)
    tokens = batch.labels.numel()
    if parts is None or (tokens * parts[1].out_features <= WHOLE_LOGITS and chunk >= tokens):
        logits = forward_logits(model, batch)
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(),
            batch.labels.to(logits.device).view(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
    trunk, head = parts
    device = head.weight.device
    inputs = _inputs(batch, device)
    hidden = trunk(**inputs).last_hidden_state.reshape(tokens, -1)
    labels = batch.labels.to(device).view(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, tokens, chunk):
        end = start + chunk
        total = total + checkpoint(
            _chunk_nll, hidden[start:end], labels[start:end], head.weight, head.bias,
            use_reentrant=False,
        )  # fmt: skip
    return total


class Objective(Protocol):
    stat_names: tuple[str, ...]
    """What `loss` sums beside the loss, reported per unit in progress."""

    def pack(self, items: Sequence[Any]) -> Batch: ...
    def units(self, item: Any) -> int: ...
    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Stats]: ...


class SFT:
    """Negative log-likelihood of every trained answer token, summed."""

    stat_names: tuple[str, ...] = ()

    def pack(self, items: Sequence[Sample]) -> Batch:
        return pack(items)

    def units(self, item: Sample) -> int:
        return sum(label != IGNORE for label in item.labels[1:])

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Stats]:
        return answer_nll(model, batch), {}


def sequence_logps(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each packed sample's summed log-likelihood of its trained tokens, and their count."""
    labels = batch.labels.to(logits.device).view(-1)
    token_logps = -F.cross_entropy(
        logits.view(-1, logits.size(-1)).float(), labels, ignore_index=IGNORE, reduction="none"
    )
    lengths = batch.cu_seq_lens.diff().to(torch.long).to(logits.device)
    segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=logits.device), lengths)
    sums = torch.zeros(lengths.numel(), device=logits.device).index_add(0, segment, token_logps)
    counts = torch.zeros(lengths.numel(), device=logits.device).index_add(
        0, segment, (labels != IGNORE).float()
    )
    return sums, counts


def dpo_loss(
    logps: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor, beta: float, kind: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards, as TRL computes them, from
    (pairs, 2) log-likelihoods (chosen, rejected), their references and token counts."""
    ratios = logps - reference
    if kind == "ipo":  # on length-averaged ratios
        averaged = ratios / tokens.clamp(min=1)
        losses = (averaged[:, 0] - averaged[:, 1] - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * (ratios[:, 0] - ratios[:, 1]))
    rewards = beta * ratios.detach()
    return losses, rewards[:, 0], rewards[:, 1]


class DPO:
    stat_names = ("chosen", "rejected", "margins", "accuracy")
    """The rewards (beta times the log-likelihood gained over the reference) of the
    chosen and rejected answers, their difference, and how often the chosen wins."""

    def __init__(self, params: Parameters) -> None:
        self.beta, self.kind = params.dpo_beta, params.dpo_loss
        self.sft_weight = params.dpo_sft_weight

    def pack(self, items: Sequence[Pair]) -> Batch:
        batch = pack([s for pair in items for s in (pair.chosen, pair.rejected)])
        return replace(batch, reference=torch.tensor([pair.reference for pair in items]))

    def units(self, item: Pair) -> int:
        return 1

    def logps(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(pairs, 2) log-likelihoods of the batch's chosen and rejected answers, and
        their token counts (0 for a filler pair's, which has no targets)."""
        sums, counts = sequence_logps(logits, batch)
        return sums.view(-1, 2), counts.view(-1, 2)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Stats]:
        logps, tokens = self.logps(forward_logits(model, batch), batch)
        assert batch.reference is not None
        reference = batch.reference.to(logps.device)
        losses, chosen, rejected = dpo_loss(logps, reference, tokens, self.beta, self.kind)
        if self.sft_weight:  # the chosen answer's mean token NLL, per pair
            losses = losses - self.sft_weight * logps[:, 0] / tokens[:, 0].clamp(min=1)
        real = (tokens[:, 0] > 0).float()
        stats = {
            "chosen": (chosen * real).sum(),
            "rejected": (rejected * real).sum(),
            "margins": ((chosen - rejected) * real).sum(),
            "accuracy": ((chosen > rejected).float() * real).sum(),
        }
        return (losses * real).sum(), stats

    @torch.no_grad()
    def with_reference(
        self,
        model: torch.nn.Module,
        forward: torch.nn.Module,
        pairs: Sequence[Pair],
        size: int,
        rank: int = 0,
        world: int = 1,
    ) -> list[Pair]:
        """`pairs` with their log-likelihoods under `model` as it is (before the first
        step: the reference). `forward` is what runs the pass (the engine's module, so
        ZeRO-3 gathers). With several ranks each computes every `world`-th batch and
        they add up what they found (zeros elsewhere), so no rank does the whole pass."""
        chunks = [pairs[start : start + size] for start in range(0, len(pairs), size)]
        found = torch.zeros(len(pairs), 2, dtype=torch.float32, device=_device_of(model))
        was_training = model.training
        model.eval()
        try:
            # Every rank runs as many passes (under ZeRO-3 each one gathers the weights
            # from all of them): one with no batch of its own left repeats a batch.
            for turn in range(-(-len(chunks) // world)):
                index = turn * world + rank
                chunk = chunks[index] if index < len(chunks) else chunks[0]
                batch = self.pack(chunk)
                logps, _ = self.logps(forward_logits(forward, batch), batch)
                if index < len(chunks):
                    found[index * size : index * size + len(chunk)] = logps.float()
        finally:
            model.train(was_training)
        if world > 1:
            torch.distributed.all_reduce(found)
        return [
            replace(p, reference=(c, r)) for p, (c, r) in zip(pairs, found.tolist(), strict=True)
        ]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def objective_for(params: Parameters) -> SFT | DPO:
    return DPO(params) if params.finetune_type == "DPO" else SFT()
