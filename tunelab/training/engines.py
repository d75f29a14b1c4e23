"""How one training step is taken: on one process, with torch DDP, or with DeepSpeed ZeRO.

The loop in `trainer.py` is the same for all three; an engine owns the wrapped model,
the optimizer step and the checkpoint format (DeepSpeed partitions optimizer state
over ranks, so its checkpoints are a folder written by every rank).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from tunelab.params import Parameters
from tunelab.training.model_io import compute_dtype, load_trainable_state, trainable_state


class Checkpoints(Protocol):
    def save(self, step: int, state: dict[str, Any]) -> None: ...
    def latest(self) -> dict[str, Any] | None: ...
    def save_folder(self, step: int, folder: Path) -> None: ...
    def fetch_latest_folder(self, into: Path) -> int | None: ...


class Engine(Protocol):
    module: torch.nn.Module
    """What the forward pass runs through."""

    def backward(self, loss: torch.Tensor, boundary: bool) -> None: ...
    def step(self) -> None: ...
    def learning_rate(self) -> float: ...
    def save(self, checkpoints: Checkpoints, step: int, extra: dict[str, Any]) -> None: ...
    def resume(self, checkpoints: Checkpoints) -> dict[str, Any] | None: ...
    def consolidated_state(self) -> dict[str, torch.Tensor] | None:
        """Every weight, whole, on rank 0, when they are partitioned over the ranks (ZeRO-3);
        None when the model already holds them. Every rank must call it."""


class TorchEngine:
    """One process, or torch DDP (gloo on CPUs, NCCL on GPUs) across several."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        params: Parameters,
        world: int,
        rank: int,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.params, self.rank = params, rank
        self.module = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        loss.backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.params.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, checkpoints: Checkpoints, step: int, extra: dict[str, Any]) -> None:
        if self.rank == 0:
            checkpoints.save(
                step,
                {
                    "step": step,
                    "model": trainable_state(self.model),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    **extra,
                },
            )

    def resume(self, checkpoints: Checkpoints) -> dict[str, Any] | None:
        state = checkpoints.latest()
        if state is None:
            return None
        load_trainable_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state

    def consolidated_state(self) -> dict[str, torch.Tensor] | None:
        return None


class DeepSpeedEngine:
    """DeepSpeed ZeRO-2 (or 3) over the ranks torchrun started."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        params: Parameters,
        world: int,
        rank: int,
        device: torch.device,
    ) -> None:
        import deepspeed

        dtype = compute_dtype(params, device)
        config = {
            # One packed row per micro-step; accumulation boundaries are set by the loop,
            # because a last group of an epoch may be shorter than the others.
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": params.gradient_accumulation_steps,
            "train_batch_size": params.gradient_accumulation_steps * world,
            "gradient_clipping": params.max_grad_norm,
            "zero_optimization": {"stage": params.zero_stage},
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
            "steps_per_print": 1 << 30,
        }
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.module, self.rank = self.engine, rank

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        # The loop already divides by the step's token count: no division by the
        # accumulation steps on top.
        self.engine.backward(loss, scale_wrt_gas=False)
        if not boundary:
            self.engine.step()  # no update off a boundary; keeps DeepSpeed's counters right

    def step(self) -> None:
        self.engine.step()

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, checkpoints: Checkpoints, step: int, extra: dict[str, Any]) -> None:
        # Every rank writes its optimizer partition; ranks share this node's disk.
        folder = _shared_folder(self.rank, "save")
        tag = f"step-{step}"
        self.engine.save_checkpoint(str(folder), tag=tag, client_state=extra)
        dist.barrier()
        if self.rank == 0:
            # Only this tag: the folder still holds nothing else, and the disk stays
            # free of old checkpoints (a 7B model's is ~100 GB).
            checkpoints.save_folder(step, folder / tag)
            shutil.rmtree(folder / tag)
        dist.barrier()

    def resume(self, checkpoints: Checkpoints) -> dict[str, Any] | None:
        folder = _shared_folder(self.rank, "load")
        found = [checkpoints.fetch_latest_folder(folder / "restored") if self.rank == 0 else None]
        dist.broadcast_object_list(found, src=0)
        if found[0] is None:
            return None
        _, client_state = self.engine.load_checkpoint(str(folder), tag="restored")
        dist.barrier()
        if self.rank == 0:
            shutil.rmtree(folder / "restored")
        return {"step": found[0], **client_state}

    def consolidated_state(self) -> dict[str, torch.Tensor] | None:
        if self.engine.zero_optimization_stage() < 3:
            return None
        state: dict[str, torch.Tensor] = self.engine._zero3_consolidated_16bit_state_dict()
        return state if self.rank == 0 else {}


_folders: dict[str, Path] = {}


def _shared_folder(rank: int, purpose: str) -> Path:
    """A folder every rank of this node agrees on (rank 0 picks it)."""
    if purpose not in _folders:
        name = [tempfile.mkdtemp(prefix=f"tunelab-ds-{purpose}-") if rank == 0 else None]
        dist.broadcast_object_list(name, src=0)
        _folders[purpose] = Path(str(name[0]))
    return _folders[purpose]


def deepspeed_available() -> bool:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return False
    return True
