"""The default base model's tokenizer, for token-length statistics of datasets.

Nothing can be fetched from a model hub here, so the built-in default is a small
byte-level BPE tokenizer trained once, deterministically, on a bilingual synthetic
corpus, and cached in the data directory. An operator points TUNELAB_DEFAULT_TOKENIZER
at a real base model's tokenizer.json to measure with that one instead.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tunelab.settings import Settings

VERSION = 1
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|eos|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""The built-in base model's chat template: a role tag, the content, end of turn."""
CONTEXT = 1024
"""The built-in base model's context (max_position_embeddings)."""
_TEXT = (
    "the be to of and a in that have it for not on with he as you do at this but his by "
    "from they we say her she or an will my one all would there their what so up out if "
    "about who get which go me when make can like time no just him know take people into "
    "year your good some could them see other than then now look only come its over think "
    "also back after use two how our work first well way even new want because any these "
    "give day most us question answer model data train cluster dataset experiment service"
)
_WORDS = _TEXT.split()


def _corpus(lines: int = 20_000) -> list[str]:
    rng = random.Random(VERSION)
    hanzi = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16)))
        + rng.choice(["?", ".", "!", ","])
        + "".join(rng.choice(hanzi) for _ in range(rng.randint(2, 12)))
        + rng.choice(["\uff1f", "\u3002", "\uff0c"])
        for _ in range(lines)
    ]


def build_tiny_tokenizer(vocab_size: int = 4096) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer


def tiny_tokenizer_path(data_dir: Path) -> Path:
    """The built-in tokenizer's file, trained on first use (about 2 s) and kept."""
    path = data_dir / "models" / f"tiny-tokenizer-v{VERSION}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
        os.close(fd)
        build_tiny_tokenizer().save(tmp)
        os.replace(tmp, path)  # concurrent builders produce the same file
    return path


@lru_cache(maxsize=4)
def _load(path: str) -> Tokenizer:
    return Tokenizer.from_file(path)


def write_prompt_files(data_dir: Path, out: Path) -> None:
    """The files a prompt of the built-in base model is rendered and counted with, as
    its saved tokenizer has them, made without torch or the model's weights."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_tokenizer_path(data_dir), out / "tokenizer.json")
    config = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "config.json").write_text(json.dumps({"max_position_embeddings": CONTEXT}))


def default_tokenizer(settings: Settings) -> Tokenizer:
    path = settings.default_tokenizer or tiny_tokenizer_path(settings.data_dir)
    return _load(str(path))
