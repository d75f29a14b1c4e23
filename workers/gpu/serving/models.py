"""What a service serves: the server's model folder, its own adapter folder (for a LoRA
service), and the chat template and stop tokens its answers are prompted with."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from filelock import FileLock

from tunelab.db.models import Model
from tunelab.settings import Settings
from tunelab.store import ObjectStore, key_from_uri
from tunelab.training.models import resolve_model_dir
from tunelab.workers.context import WorkerContext


@dataclass(frozen=True)
class Served:
    server_model_uri: str
    """The model a server runs: the base model of a LoRA model, else the model itself."""
    adapter_uri: str | None
    chat_template: str | None
    stop_tokens: tuple[str, ...]


def served(model: Model) -> Served:
    spec = model.spec or {}
    if model.kind == "finetuned" and spec.get("adapter"):
        base_uri = spec["base_model_uri"]
        adapter: str | None = model.uri
    else:
        base_uri, adapter = model.uri, None
    return Served(
        server_model_uri=base_uri,
        adapter_uri=adapter,
        chat_template=spec.get("chat_template"),
        stop_tokens=tuple(spec.get("stop_tokens") or ()),
    )


def local_dir(ctx: WorkerContext, uri: str) -> Path:
    """A local folder with the model or adapter at `uri`, fetched once into the cache."""
    return model_folder(ctx.settings, ctx.store, uri)


def model_folder(settings: Settings, store: ObjectStore, uri: str) -> Path:
    if uri.startswith(("local://", f"s3://{getattr(store, 'bucket', '')}/")):
        return _fetch(store, key_from_uri(uri), settings.model_cache_dir / "platform")
    return resolve_model_dir(uri, settings, store)


def _fetch(store: ObjectStore, prefix: str, cache: Path) -> Path:
    prefix = prefix.rstrip("/") + "/"
    # Named by the store's URI of the prefix: two buckets may hold the same keys.
    target = cache / hashlib.sha256(store.uri(prefix).encode()).hexdigest()[:24]
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / ".complete").exists():
            return target
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            names = store.list(prefix)
            if not names:
                raise FileNotFoundError(f"nothing stored under {prefix}")
            for key in names:
                dest = (Path(tmp) / key[len(prefix) :]).resolve()
                if not dest.is_relative_to(Path(tmp).resolve()):
                    raise FileNotFoundError(f"{key!r} would land outside the model")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with store.open(key) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out)
            (Path(tmp) / ".complete").touch()
            os.replace(tmp, target)
            os.makedirs(tmp)  # TemporaryDirectory removes it on exit
    return target


@lru_cache(maxsize=64)
def tokenizer_of(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def render(
    model_dir: Path, template: str | None, messages: list[dict[str, str]]
) -> tuple[str, list[str]]:
    """The prompt text, rendered with the template the model was trained with, and the
    stop strings besides the model's own end-of-sequence token."""
    tokenizer = tokenizer_of(model_dir)
    text: str = tokenizer.apply_chat_template(
        messages,
        chat_template=template or tokenizer.chat_template,
        tokenize=False,
        add_generation_prompt=True,
    )
    return text, [t for t in (tokenizer.eos_token,) if t]
