"""Checking a LoRA adapter before a server loads it.

Measured with vLLM: one bad adapter (say, `modules_to_save` with `lm_head`) kills the
engine, and with it every service on that server. So what vLLM would refuse is refused
here, with the reason, and only that service fails.
"""

from __future__ import annotations

import json
from pathlib import Path

SUPPORTED_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj"}
)
"""Modules vLLM applies LoRA to in the decoder models tunelab trains (LLaMA family)."""
ALLOWED_TO_SAVE = frozenset({"classifier", "score"})


class AdapterRejected(ValueError):
    """The adapter cannot be served; the message says why."""


def check_adapter(folder: Path, max_rank: int) -> None:
    config_path = folder / "adapter_config.json"
    if not config_path.exists():
        raise AdapterRejected("the model has no adapter_config.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterRejected(f"adapter_config.json is not JSON: {exc}") from None
    if config.get("peft_type") != "LORA":
        raise AdapterRejected(f"peft_type {config.get('peft_type')!r} is not LORA")
    rank = int(config.get("r", 0))
    if not 0 < rank <= max_rank:
        raise AdapterRejected(f"LoRA rank {rank} is above the server's limit of {max_rank}")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        raise AdapterRejected("target_modules given as a pattern; list the module names")
    unsupported = sorted(set(targets) - SUPPORTED_MODULES)
    if unsupported:
        raise AdapterRejected(f"target modules {unsupported} are not supported by the server")
    extra = set(config.get("modules_to_save") or []) - ALLOWED_TO_SAVE
    if extra:
        raise AdapterRejected(f"modules_to_save {sorted(extra)} cannot be served as an adapter")
    if config.get("use_dora"):
        raise AdapterRejected("DoRA adapters are not supported by the server")
    if not any(folder.glob("adapter_model.*")):
        raise AdapterRejected("the adapter's weights (adapter_model.*) are missing")
