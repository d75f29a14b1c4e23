"""Where base models may be registered from: the operator's choice.

A workspace names a base model by a directory on the workers or an s3:// prefix; the
workers read it with the platform's own access, so only what the operator listed
(TUNELAB_MODEL_ROOTS) and the model cache are allowed, and never the platform's own
object store, where every workspace's data and fine-tuned models live.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.settings import Settings


def _local_roots(settings: Settings) -> list[Path]:
    roots = [settings.model_cache_dir]
    roots += [Path(r) for r in _listed(settings) if not r.startswith("s3://")]
    return [Path(os.path.realpath(r)) for r in roots]


def _listed(settings: Settings) -> list[str]:
    return [r.strip() for r in settings.model_roots.split(",") if r.strip()]


def _s3_roots(settings: Settings) -> list[str]:
    return [r.rstrip("/") + "/" for r in _listed(settings) if r.startswith("s3://")]


def source_problem(settings: Settings, uri: str) -> str | None:
    """Why `uri` may not be registered as a base model (None: it may)."""
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if ".." in key.split("/"):
            return "an s3:// prefix may not hold '..'"
        if settings.store == "s3" and bucket == settings.s3_bucket:
            return "the platform's own bucket holds every workspace's data: not a model source"
        prefix = f"s3://{bucket}/{key.rstrip('/')}/" if key else f"s3://{bucket}/"
        if not any(prefix.startswith(root) for root in _s3_roots(settings)):
            return f"not under a model root the operator allows ({_allowed(settings)})"
        return None
    path = Path(os.path.realpath(uri.removeprefix("file://")))
    objects = Path(os.path.realpath(settings.data_dir / "objects"))
    if path.is_relative_to(objects):
        return "the platform's object store holds every workspace's data: not a model source"
    if not any(path.is_relative_to(root) for root in _local_roots(settings)):
        return f"not under a model root the operator allows ({_allowed(settings)})"
    return None


def _allowed(settings: Settings) -> str:
    roots = [str(r) for r in _local_roots(settings)] + _s3_roots(settings)
    return "TUNELAB_MODEL_ROOTS: " + ", ".join(roots)
