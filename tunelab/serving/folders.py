"""The local folders of what a service serves: the server's model and its adapters,
fetched from the object store into the model cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from tunelab.context import Context
from tunelab.serving.model_files import in_platform_store
from tunelab.settings import Settings
from tunelab.store import ObjectStore, key_from_uri
from tunelab.training.model_dirs import resolve_model_dir


def local_dir(ctx: Context, uri: str) -> Path:
    """A local folder with the model or adapter at `uri`, fetched once into the cache."""
    return model_folder(ctx.settings, ctx.store, uri)


def model_folder(settings: Settings, store: ObjectStore, uri: str) -> Path:
    if in_platform_store(store, uri):
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
