"""The training loop: padding-free batches, answer-only loss (SFT) or the DPO loss on
preference pairs (see objectives.py), checkpoints that resume exactly.

A plain loop rather than transformers' Trainer: resuming mid-epoch from a checkpoint in
the object store, stopping within a step on cancel, one progress record per step and a
loss normalised over every process's tokens are each a callback or an override away
there, and together they are most of the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from transformers import get_scheduler

from tunelab.conversations import Message, from_pair
from tunelab.params import Parameters
from tunelab.preferences import Preference
from tunelab.training.engines import Checkpoints, DeepSpeedEngine, Engine, TorchEngine
from tunelab.training.model_io import compute_dtype
from tunelab.training.objectives import DPO, Pair, encode_preferences, objective_for
from tunelab.training.packing import batches, epoch_order, steps_per_epoch
from tunelab.training.template import Truncation, encode_conversation


class Stopped(Exception):
    """Training was asked to stop (cancel or shutdown) and did, between two steps."""


@dataclass
class TrainingData:
    samples: list[Any]
    """Encoded conversations (Sample), or preference pairs (Pair) for DPO."""
    truncated: int = 0

    @classmethod
    def from_conversations(
        cls,
        tokenizer: Any,
        conversations: Sequence[Sequence[Message]],
        block_size: int,
        truncation: Truncation = "turns",
    ) -> TrainingData:
        samples = [encode_conversation(tokenizer, c, block_size, truncation) for c in conversations]
        return cls(samples, sum(s.truncated for s in samples))

    @classmethod
    def from_preferences(
        cls,
        tokenizer: Any,
        preferences: Sequence[Preference],
        block_size: int,
        truncation: Truncation = "turns",
    ) -> TrainingData:
        pairs = encode_preferences(tokenizer, preferences, block_size, truncation)
        return cls(list(pairs), sum(p.truncated for p in pairs))

    @classmethod
    def from_pairs(
        cls,
        tokenizer: Any,
        pairs: Sequence[tuple[str, str]],
        block_size: int,
        system: str | None = None,
    ) -> TrainingData:
        return cls.from_conversations(
            tokenizer, [from_pair(q, a, system) for q, a in pairs], block_size
        )


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    tokens: int = 0
    """Real (not padding) tokens the step trained on, over every rank."""
    val_loss: float | None = None
    """Loss on the validation samples, on the steps where it is measured."""
    rewards: dict[str, float] | None = None
    """DPO: the step's mean rewards (chosen, rejected, margins) and accuracy."""

    def as_dict(self) -> dict[str, Any]:
        def rounded(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: rounded(x) for k, x in v.items()}
            return round(v, 6) if isinstance(v, float) else v

        return {k: rounded(v) for k, v in vars(self).items()}


@dataclass
class Selection:
    """The best validation loss so far, where it was, and evaluations since."""

    best_step: int | None = None
    best_val_loss: float | None = None
    evaluations_since_best: int = 0


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    history: list[Progress] = field(default_factory=list)
    selection: Selection = field(default_factory=Selection)
    early_stopped_at: int | None = None
    """The step at which early stopping ended training, if it did."""
    selected_step: int | None = None
    """The step whose weights the trained model holds."""

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss if self.history else math.nan


def _optimizer(model: torch.nn.Module, params: Parameters) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Biases and norm weights (1-D) are not decayed, as in transformers' Trainer.
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": params.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    # An empty group (LoRA trains no 1-D weights) is dropped by DeepSpeed, which then
    # disagrees with the scheduler about how many groups there are.
    groups = [g for g in groups if g["params"]]
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.learning_rate)
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, lr=params.learning_rate)
    return torch.optim.SGD(groups, lr=params.learning_rate, momentum=0.9)


class Trainer:
    """Trains `model` (already on `device`, LoRA-wrapped or not) on `data`.

    With `world` > 1 the caller has initialised torch.distributed and wrapped nothing:
    the trainer wraps the model in DDP and each rank trains on its share of every
    global batch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        params: Parameters,
        data: TrainingData,
        device: torch.device,
        *,
        checkpoints: Checkpoints | None = None,
        on_step: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_resume: Callable[[int, list[Progress]], None] | None = None,
        rank: int = 0,
        world: int = 1,
        engine: Literal["torch", "deepspeed"] = "torch",
        validation: Sequence[Any] = (),
        best_checkpoints: Checkpoints | None = None,
    ) -> None:
        if not data.samples:
            raise ValueError("no training samples")
        if params.select == "best" and (not validation or best_checkpoints is None):
            raise ValueError("select=best needs validation samples and a place for the best")
        self.validation, self.best_checkpoints = list(validation), best_checkpoints
        self.objective = objective_for(params)
        self.model, self.params, self.data, self.device = model, params, data, device
        self.checkpoints, self.on_step, self.should_stop = checkpoints, on_step, should_stop
        self._stop_agreed = False
        self.on_resume = on_resume
        self.rank, self.world, self.engine_kind = rank, world, engine
        self.micro_per_epoch = steps_per_epoch(len(data.samples), params.batch_size)
        self.total_micro = self.micro_per_epoch * params.epochs
        self.total_steps = -(-self.total_micro // params.gradient_accumulation_steps)
        self.eval_every = params.eval_every or max(
            1, -(-self.micro_per_epoch // params.gradient_accumulation_steps)
        )
        self.group_tokens = self._target_tokens_per_step()

    def _target_tokens_per_step(self) -> list[int]:
        """Units (answer tokens, or pairs) in each optimizer step over all ranks: every
        rank computes the same list from the seeded order, so the loss is normalised
        globally with no communication, and matches a single process with the same
        global batch."""
        per_micro = []
        size, units = self.params.batch_size, self.objective.units
        for epoch in range(self.params.epochs):
            order = epoch_order(len(self.data.samples), self.params.seed, epoch)
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                per_micro.append(sum(units(self.data.samples[i]) for i in chunk))
        accum = self.params.gradient_accumulation_steps
        return [sum(per_micro[i : i + accum]) for i in range(0, len(per_micro), accum)]

    def _engine(self) -> Engine:
        params = self.params
        optimizer = _optimizer(self.model, params)
        scheduler = get_scheduler(
            "constant_with_warmup" if params.scheduler == "constant" else params.scheduler,
            optimizer,
            num_warmup_steps=round(params.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        if self.engine_kind == "deepspeed":
            return DeepSpeedEngine(
                self.model, optimizer, scheduler, params, self.world, self.rank, self.device
            )
        return TorchEngine(self.model, optimizer, scheduler, params, self.world, self.rank)

    def run(self) -> TrainResult:
        params = self.params
        torch.manual_seed(params.seed)
        engine = self.engine = self._engine()
        result = TrainResult(steps=self.total_steps, resumed_from=0)
        state = engine.resume(self.checkpoints) if self.checkpoints is not None else None
        if state is not None:
            # Dropout draws from it: restoring it continues the very same random sequence.
            torch.set_rng_state(state["rng"])
            result.history.extend(Progress(**p) for p in state["history"])
            result.resumed_from = int(state["step"])
            result.selection = Selection(**state.get("selection", {}))
            if self.on_resume is not None and self.rank == 0:
                self.on_resume(result.resumed_from, result.history)
        dtype = compute_dtype(params, self.device)
        # DeepSpeed casts the model itself; torch engines use autocast.
        autocast = torch.autocast(
            self.device.type,
            dtype=dtype,
            enabled=dtype != torch.float32 and self.engine_kind == "torch",
        )
        if isinstance(self.objective, DPO):
            with autocast:
                self._reference(self.objective, state)
        self.model.train()
        accum = params.gradient_accumulation_steps
        step, tokens, started = result.resumed_from, 0, time.perf_counter()
        loss_sum: torch.Tensor | float = 0.0
        stat_sums: dict[str, torch.Tensor | float] = dict.fromkeys(self.objective.stat_names, 0.0)
        for micro, batch in self._micro_batches(step * accum):
            if self._stop_requested():
                raise Stopped(f"stopped at step {step}")
            boundary = (micro + 1) % accum == 0 or micro + 1 == self.total_micro
            with autocast:
                loss, stats = self.objective.loss(engine.module, batch)
            denominator = self.group_tokens[step]
            # Data-parallel engines average gradients over ranks; scaling by `world`
            # makes the result the sum over all ranks' units divided by the global count.
            engine.backward(loss * self.world / max(denominator, 1), boundary)
            # Summed on the device: reading a value back would wait for the GPU to
            # finish every micro-step; progress reads them once per step.
            loss_sum = loss_sum + loss.detach().float()
            for name, value in stats.items():
                stat_sums[name] = stat_sums[name] + value.detach().float()
            # A rank's filler sample (a short last batch) trains on nothing: not counted.
            tokens += batch.tokens if batch.target_tokens else 0
            if not boundary:
                continue
            engine.step()
            step += 1
            progress = self._progress(
                step, micro, loss_sum, denominator, tokens, started, stat_sums
            )
            stat_sums = dict.fromkeys(stat_sums, 0.0)
            progress.learning_rate = engine.learning_rate()
            stop_early = False
            if self.validation and (step % self.eval_every == 0 or step == self.total_steps):
                with autocast:
                    progress.val_loss = self.validation_loss()
                stop_early = self._select(step, progress.val_loss, result)
            result.history.append(progress)
            if self.on_step is not None and self.rank == 0:
                self.on_step(progress)
            loss_sum, tokens, started = 0.0, 0, time.perf_counter()
            if stop_early:
                result.early_stopped_at = step
                break
            if self.checkpoints is not None and (
                step % params.checkpoint_every == 0 and step != self.total_steps
            ):
                engine.save(self.checkpoints, step, self._extra(result))
        result.selected_step = step
        best = result.selection.best_step
        if params.select == "best" and best is not None and best != step:
            assert self.best_checkpoints is not None
            engine.resume(self.best_checkpoints)  # the best step's weights
            result.selected_step = best
        return result

    def _extra(self, result: TrainResult) -> dict[str, Any]:
        """What a checkpoint keeps beside the engine's state."""
        extra = {
            "rng": torch.get_rng_state(),
            # The loss curve so far: a resumed task's metrics then have no hole where
            # the killed attempt's unflushed progress was.
            "history": [p.as_dict() for p in result.history],
            "selection": vars(result.selection),
        }
        if isinstance(self.objective, DPO):
            # Once full fine-tuning has taken a step the reference weights are gone.
            extra["reference"] = [
                [p.reference for p in self.data.samples],
                [p.reference for p in self.validation],
            ]
        return extra

    def _reference(self, objective: DPO, state: dict[str, Any] | None) -> None:
        """Give every pair its reference log-likelihoods: from the checkpoint when
        resuming, else computed now, before any step. Dropout is turned off, as TRL
        does for DPO: with it the model's log-likelihoods wander from the reference's
        by noise alone."""
        for module in self.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if state is not None and "reference" in state:
            train, validation = state["reference"]
            self.data.samples = [
                Pair(p.chosen, p.rejected, tuple(r))
                for p, r in zip(self.data.samples, train, strict=True)
            ]
            self.validation = [
                Pair(p.chosen, p.rejected, tuple(r))
                for p, r in zip(self.validation, validation, strict=True)
            ]
            return
        size, forward, shard = self.params.batch_size, self.engine.module, (self.rank, self.world)
        self.data.samples = objective.with_reference(
            self.model, forward, self.data.samples, size, *shard
        )
        self.validation = objective.with_reference(
            self.model, forward, self.validation, size, *shard
        )

    def _select(self, step: int, val_loss: float, result: TrainResult) -> bool:
        """Track the best validation loss (keeping its weights when they are the ones
        to register); True when early stopping says training should end. Every rank
        measures the same loss, so all decide alike without talking."""
        params, selection = self.params, result.selection
        best = selection.best_val_loss
        if best is None or val_loss < best - params.early_stopping_min_delta:
            selection.best_step, selection.best_val_loss = step, val_loss
            selection.evaluations_since_best = 0
            if params.select == "best" and self.best_checkpoints is not None:
                self.engine.save(self.best_checkpoints, step, self._extra(result))
            return False
        selection.evaluations_since_best += 1
        patience = params.early_stopping_patience
        return patience is not None and selection.evaluations_since_best >= patience

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss per trained token of the validation samples, on every rank (each
        measures them all: no communication, and ZeRO-3's gathers stay in step)."""
        module, objective = self.engine.module, self.objective
        self.model.eval()
        total, count = 0.0, 0
        try:
            for start in range(0, len(self.validation), self.params.batch_size):
                chunk = self.validation[start : start + self.params.batch_size]
                total += float(objective.loss(module, objective.pack(chunk))[0])
                count += sum(objective.units(item) for item in chunk)
        finally:
            self.model.train()
        return total / max(count, 1)

    def trained_model(self, fresh: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
        """After `run`: a model holding every trained weight on rank 0 (None elsewhere).
        Under ZeRO-3 the weights are spread over the ranks, so they are gathered (every
        rank must call this) into `fresh()`, a new copy of the untrained model."""
        state = self.engine.consolidated_state()
        if self.rank != 0:
            return None
        if state is None:
            return self.model
        model = fresh()
        model.load_state_dict(state)
        return model

    def _stop_requested(self) -> bool:
        """Whether any rank was asked to stop. Ranks must stop at the same step, or the
        others would wait forever in the next all-reduce: with several, the request
        travels in the step's progress all-reduce (`_progress`), so asking costs no
        synchronisation of its own."""
        if self.world == 1:
            return self.should_stop()
        return self._stop_agreed

    def _micro_batches(self, skip: int) -> Any:
        for epoch in range(self.params.epochs):
            if (epoch + 1) * self.micro_per_epoch <= skip:
                continue
            epoch_batches = batches(
                self.data.samples,
                self.params.batch_size,
                self.params.seed,
                epoch,
                self.rank,
                self.world,
                self.objective.pack,
            )
            for i, batch in enumerate(epoch_batches):
                micro = epoch * self.micro_per_epoch + i
                if micro >= skip:
                    yield micro, batch

    def _progress(
        self,
        step: int,
        micro: int,
        loss_sum: torch.Tensor | float,
        denominator: int,
        tokens: int,
        t0: float,
        stat_sums: dict[str, torch.Tensor | float],
    ) -> Progress:
        # On the training device: NCCL reduces CUDA tensors only. The step's one
        # read-back from the device; with several ranks it also carries whether any of
        # them was asked to stop.
        asked = float(self.world > 1 and self.should_stop())
        sums = [loss_sum, float(tokens), asked, *stat_sums.values()]
        totals = torch.stack(
            [torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in sums]
        )
        if self.world > 1:
            dist.all_reduce(totals)
        values = totals.tolist()
        self._stop_agreed = values[2] > 0
        elapsed = max(time.perf_counter() - t0, 1e-9)
        means = [v / max(denominator, 1) for v in values[3:]]
        return Progress(
            step=step,
            total_steps=self.total_steps,
            epoch=round((micro + 1) / self.micro_per_epoch, 4),
            loss=values[0] / max(denominator, 1),
            learning_rate=0.0,
            tokens_per_second=values[1] / elapsed,
            tokens=round(values[1]),
            rewards=dict(zip(stat_sums, means, strict=True)) if stat_sums else None,
        )
