"""The built-in base model: a tiny LLaMA-architecture model built here, deterministically.

The platform ships no weights and nothing can be fetched from a model hub, so tests and
a fresh install get a test-size model made on first use: the built-in byte-level BPE
tokenizer, a fixed-seed config, and about a minute of full pre-training on synthetic
bilingual Q&A facts. The pre-training matters: LoRA on a random-init tiny model learns
nothing (measured: 0% after 100 epochs); after it, LoRA learns a new Q&A set in
seconds. It is a test-size model: it knows only the facts it was shown.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunelab.params import Parameters
from tunelab.synthetic import qa_pairs
from tunelab.tokenizer import BOS, CHAT_TEMPLATE, CONTEXT, EOS, PAD, tiny_tokenizer_path
from tunelab.tokenizer import VERSION as TOKENIZER_VERSION

log = logging.getLogger("tunelab.basemodel")

NAME = "tiny-llama"
VERSION = 1
PRETRAIN_SEED = 20261128
PRETRAIN = Parameters(
    peft=False,
    learning_rate=2e-3,
    epochs=12,
    batch_size=16,
    warmup_ratio=0.05,
    weight_decay=0.0,
    block_size=128,
    checkpoint_every=10_000,
)


def tiny_config(vocab_size: int, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=False,
    )


def tiny_tokenizer(data_dir: Path) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_tokenizer_path(data_dir)),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_base_dir(cache_dir: Path) -> Path:
    return cache_dir / f"{NAME}-v{VERSION}-tok{TOKENIZER_VERSION}"


def ensure_tiny_base(cache_dir: Path, data_dir: Path) -> Path:
    """The built-in base model's directory, built on first use (about a minute on two
    cores) and kept; concurrent first users wait for one build."""
    target = tiny_base_dir(cache_dir)
    if (target / "config.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        log.info("building the built-in base model %s (about a minute)", target.name)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            build_tiny_base(Path(tmp) / "model", data_dir)
            shutil.move(str(Path(tmp) / "model"), target)
    return target


BUILD_THREADS = 2
"""Torch threads the built-in model is built on, wherever it is built: on another count
a matmul adds its parts in another order, and the model came out otherwise (weights
0.1 apart) from one machine, or one first user, to the next."""


def build_tiny_base(out: Path, data_dir: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        _build_tiny_base(out, data_dir)
    finally:
        torch.set_num_threads(threads)


def _build_tiny_base(out: Path, data_dir: Path) -> None:
    from tunelab.training.trainer import Trainer, TrainingData

    torch.manual_seed(PRETRAIN_SEED)
    tokenizer = tiny_tokenizer(data_dir)
    model = LlamaForCausalLM(tiny_config(len(tokenizer), tokenizer))
    data = TrainingData.from_pairs(tokenizer, qa_pairs(400, PRETRAIN_SEED), PRETRAIN.block_size)
    Trainer(model, PRETRAIN, data, torch.device("cpu")).run()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
