"""Loading a base model for training and saving what training produced.

The same code loads the built-in test-size model and a real one (a Hugging Face
directory, e.g. Llama-2-7B): nothing here knows which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.params import Parameters
from tunelab.training import attention

STOP_TOKENS_FILE = "stop_tokens.json"


class UnsupportedSetup(RuntimeError):
    """The parameters ask for something this machine cannot do (e.g. int4 on a CPU)."""


def compute_dtype(params: Parameters, device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        # bf16 trains about 10x slower than fp32 on CPUs without bf16 units.
        return torch.float32
    if params.fp16:
        return torch.float16
    if params.bf16 or (params.bf16 is None and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: Path, params: Parameters, device: torch.device, adapter: Path | None = None
) -> Any:
    """The base model, quantised when asked, with a LoRA adapter when `params.peft`.

    `adapter` is a fine-tuned LoRA model being continued: with peft its adapter trains
    on (its rank and targets kept), without it the adapter is merged into the weights.
    """
    kwargs: dict[str, Any] = {}
    if params.quantization != "none":
        if device.type != "cuda":
            raise UnsupportedSetup(f"{params.quantization} quantization needs a GPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=params.quantization == "int8",
            load_in_4bit=params.quantization == "int4",
            bnb_4bit_compute_dtype=compute_dtype(params, device),
        )
    # A frozen base is kept in bf16 on GPUs that compute in it (half the memory of
    # fp32); weights that train stay fp32 for the optimizer, mixed precision coming
    # from autocast.
    dtype = frozen_dtype(params, device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    return prepare_model(model, params, device, adapter)


def frozen_dtype(params: Parameters, device: torch.device) -> torch.dtype:
    """The dtype of the base's weights: bf16 when only an adapter trains and the GPU
    computes in bf16 (as peft's and TRL's recipes load a base); fp16's narrow range
    would risk overflow in the residual stream, so an fp16 run keeps an fp32 base."""
    adapter_only = params.peft and params.quantization == "none"
    if adapter_only and device.type == "cuda" and compute_dtype(params, device) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def prepare_model(
    model: Any, params: Parameters, device: torch.device, adapter: Path | None = None
) -> Any:
    """A loaded base made ready to train: per-sample attention for packed rows, the
    LoRA adapter (new, or `adapter` continued or merged), gradient checkpointing."""
    model.config.use_cache = False  # packed samples stay apart only without a cache
    # Packed rows attend per sample: flash-attention's or torch's varlen kernel on a
    # GPU, one SDPA call per sample on a CPU (tunelab.training.attention).
    model.set_attn_implementation(attention.NAME)
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    checkpointing = _checkpointing(model, params)
    if adapter is not None and not params.peft:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if not params.peft:
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        return model.to(device)
    if params.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpoints need a grad
    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True).to(device)
    lora = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.lora_target_modules,
        task_type="CAUSAL_LM",
        # No modules_to_save: vLLM refuses adapters that carry lm_head/embed_tokens,
        # and the refusal kills its engine.
    )
    # The adapter's own weights are kept fp32 whatever the base's dtype (peft's
    # autocast_adapter_dtype), so the optimizer updates them in full precision.
    return get_peft_model(model, lora).to(device)


LARGE_MODEL_PARAMETERS = 1_000_000_000


def _checkpointing(model: Any, params: Parameters) -> bool:
    if params.gradient_checkpointing is not None:
        return params.gradient_checkpointing
    if params.quantization != "none":
        return True  # QLoRA's recipe (and peft's default for it)
    large = sum(p.numel() for p in model.parameters()) > LARGE_MODEL_PARAMETERS
    return not params.peft and large


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """What a checkpoint must keep: the adapter's weights, or every weight."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state)


def save_model(model: Any, tokenizer: Any, out: Path) -> None:
    """The adapter (or full weights) and the tokenizer with its chat template."""
    out.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation == attention.NAME:
        base.set_attn_implementation("sdpa")  # the saved config must load anywhere
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
