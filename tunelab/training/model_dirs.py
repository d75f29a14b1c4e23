"""Where a model's files come from: the built-in base model, a local directory, or an
object-store prefix (downloaded once into the model cache)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from tunelab.settings import Settings
from tunelab.store import ObjectStore
from tunelab.store.s3 import client_for

BUILTIN_SCHEME = "builtin://"


def resolve_model_dir(uri: str, settings: Settings, store: ObjectStore) -> Path:
    """A local directory holding the model at `uri`.

    Raises FileNotFoundError when the URI points at nothing that holds a config.json.
    """
    cache = settings.model_cache_dir
    if uri.startswith(BUILTIN_SCHEME):
        from tunelab.training.basemodel import NAME, ensure_tiny_base

        if uri.removeprefix(BUILTIN_SCHEME) != NAME:
            raise FileNotFoundError(f"no built-in model {uri!r}")
        return ensure_tiny_base(cache, settings.data_dir)
    if uri.startswith("s3://"):
        return _download(uri, settings, store, cache)
    path = Path(uri.removeprefix("file://"))
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path} holds no config.json")
    return path


def _download(uri: str, settings: Settings, store: ObjectStore, cache: Path) -> Path:
    target = cache / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/"
    client = client_for(settings, store)
    with FileLock(str(target) + ".lock"):
        if (target / ".complete").exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            found = 0
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            ):
                for obj in page.get("Contents", []):
                    dest = (Path(tmp) / obj["Key"][len(prefix) :]).resolve()
                    if not dest.is_relative_to(Path(tmp).resolve()):
                        raise FileNotFoundError(f"{obj['Key']!r} would land outside the model")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, obj["Key"], str(dest))
                    found += 1
            if not found:
                raise FileNotFoundError(f"nothing under {uri}")
            (Path(tmp) / ".complete").touch()
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
            os.makedirs(tmp)  # TemporaryDirectory removes it on exit
    return target
