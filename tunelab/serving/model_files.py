"""The few files of a model that its prompts need (tokenizer, chat template, config),
fetched once from wherever the model lives into a local cache, without its weights.

A model lives in the platform's object store (fine-tuned models), under another S3
prefix or a directory on the machine (registered base models), or is the built-in one,
whose files are made here from its tokenizer without torch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tunelab.settings import Settings
from tunelab.store import ObjectNotFound, ObjectStore, key_from_uri
from tunelab.tokenizer import VERSION as TOKENIZER_VERSION
from tunelab.tokenizer import write_prompt_files

PROMPT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "config.json",
)
BUILTIN_SCHEME = "builtin://"


def in_platform_store(store: ObjectStore, uri: str) -> bool:
    return uri.startswith(("local://", f"s3://{getattr(store, 'bucket', '')}/"))


def prompt_folder(settings: Settings, store: ObjectStore, uri: str) -> Path:
    """A local folder with the prompt files of the model at `uri` (those it has)."""
    if uri.startswith(BUILTIN_SCHEME):
        name = f"builtin-{uri.removeprefix(BUILTIN_SCHEME)}-tok{TOKENIZER_VERSION}"
        return _cached(settings, name, lambda out: write_prompt_files(settings.data_dir, out))
    if uri.startswith(("/", "file://")):
        return Path(uri.removeprefix("file://"))
    name = hashlib.sha256(uri.encode()).hexdigest()[:24]
    if in_platform_store(store, uri):
        prefix = key_from_uri(uri).rstrip("/") + "/"
        return _cached(settings, name, lambda out: _from_store(store, prefix, out))
    if uri.startswith("s3://"):
        return _cached(settings, name, lambda out: _from_s3(settings, store, uri, out))
    raise FileNotFoundError(f"no model at {uri!r}")


def _cached(settings: Settings, name: str, fill: Any) -> Path:
    target = settings.model_cache_dir / "prompts" / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    fill(tmp)
    try:
        os.rename(tmp, target)  # atomic; a concurrent fetch of the same files may win
    except OSError:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    return target


def _from_store(store: ObjectStore, prefix: str, out: Path) -> None:
    for name in PROMPT_FILES:
        try:
            (out / name).write_bytes(store.read_bytes(prefix + name))
        except (ObjectNotFound, FileNotFoundError):
            continue


def _from_s3(settings: Settings, store: ObjectStore, uri: str, out: Path) -> None:
    from tunelab.store.s3 import client_for

    client = client_for(settings, store)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/"
    for name in PROMPT_FILES:
        try:
            body = client.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                continue
            raise
        (out / name).write_bytes(body)
