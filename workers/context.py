"""The context a worker process's actors run with, installed once before they run."""

from __future__ import annotations

from tunelab.context import Context

_current: Context | None = None


def install(context: Context) -> None:
    global _current
    _current = context


def current() -> Context:
    if _current is None:
        raise RuntimeError("no worker context installed; call workers.context.install first")
    return _current
