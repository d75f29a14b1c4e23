"""Fine-tuning hyperparameters: one typed, range-checked group, and the presets that ship.

The fields and defaults are the seed system's (SPEC.md §3). Presets are data
(`presets.json`); a parameter group is a preset's values plus the user's changes, and
an experiment's task may override single fields again.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Parameters(BaseModel):
    """What one fine-tuning task trains with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    quantization: Literal["none", "int8", "int4"] = "none"
    """Load the base model in 8 or 4 bits (QLoRA); needs bitsandbytes and a GPU."""
    peft: bool = True
    """Train a LoRA adapter (True) or every weight of the model (False)."""
    lora_rank: int = Field(default=4, ge=1, le=256)
    lora_alpha: int = Field(default=32, ge=1, le=1024)
    lora_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Linear layers that get adapters; "all-linear" is every one but the output head."""
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    epochs: int = Field(default=10, ge=1, le=1000)
    block_size: int = Field(default=512, ge=16, le=131_072)
    """Longest sample in tokens; longer ones are cut at the end of the answer."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Samples per optimizer micro-step, over all processes of the task."""
    warmup_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    fp16: bool = False
    bf16: bool | None = None
    """None: bf16 where the hardware has it (a GPU with bf16 support), else fp32."""
    seed: int = Field(default=42, ge=0)
    checkpoint_every: int = Field(default=50, ge=1)
    """Optimizer steps between checkpoints in the object store."""
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    gradient_checkpointing: bool | None = None
    """Recompute each layer's activations in the backward pass instead of keeping them
    (less memory, about a third more compute). None: on for full fine-tuning of a model
    of more than a billion parameters and for quantised (QLoRA) training, off otherwise."""
    zero_stage: Literal[2, 3] = 2
    """DeepSpeed ZeRO stage when a task runs on several GPUs."""
    truncation: Literal["turns", "refuse"] = "turns"
    """A conversation longer than block_size keeps its first whole turns that fit
    (turns), or fails the task (refuse)."""
    validation_fraction: float = Field(default=0.0, ge=0.0, le=0.5)
    """Share of the training conversations held out (seeded) for the validation loss
    when the dataset has no validate split; 0 holds none out."""
    eval_every: int | None = Field(default=None, ge=1)
    """Optimizer steps between validation-loss measurements; None: once per epoch."""
    early_stopping_patience: int | None = Field(default=None, ge=1)
    """Stop after this many measurements without a better validation loss; None: never."""
    early_stopping_min_delta: float = Field(default=0.0, ge=0.0)
    """How much lower a validation loss must be to count as better."""
    select: Literal["best", "last"] = "last"
    """Which weights become the model: the last step's, or the best validation loss's."""
    finetune_type: Literal["SFT", "DPO"] = "SFT"
    """What is trained: answers (SFT), or a preference of the chosen answer over the
    rejected one on preference pairs (DPO). A parameter group's finetune_type."""
    dpo_beta: float = Field(default=0.1, gt=0.0, le=10.0)
    """DPO: how far from the reference model the preference may pull (lower: further)."""
    dpo_loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """DPO's loss: the paper's sigmoid, or IPO's squared loss on length-averaged
    log-likelihoods."""
    dpo_sft_weight: float = Field(default=0.0, ge=0.0, le=10.0)
    """DPO: weight of an added SFT loss on the chosen answers (0: none)."""

    @model_validator(mode="after")
    def _consistent(self) -> Parameters:
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 cannot both be on")
        if self.quantization != "none" and not self.peft:
            raise ValueError("quantization trains an adapter: it needs peft on")
        return self


def errors_of(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    """Each problem as an API error detail naming its field under `prefix`."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"] if p != "__root__")
        out.append(
            {
                "field": f"{prefix}.{field}" if field else prefix,
                "message": err["msg"].removeprefix("Value error, "),
            }
        )
    return out


@lru_cache(maxsize=1)
def presets() -> dict[str, dict[str, Any]]:
    """Named parameter sets shipped with tunelab (name → description and values)."""
    text = resources.files("tunelab").joinpath("presets.json").read_text("utf-8")
    loaded: dict[str, dict[str, Any]] = json.loads(text)
    return loaded


def resolve(preset: str | None, values: dict[str, Any]) -> Parameters:
    """A preset's values (or the defaults) with `values` on top; ValidationError if bad.

    Raises KeyError for an unknown preset.
    """
    base = presets()[preset]["parameters"] if preset else {}
    return Parameters.model_validate({**base, **values})
