"""The clients an actor needs, wired once per worker process (or per test)."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.db import Database
from tunelab.events.bus import EventBus
from tunelab.settings import Settings
from tunelab.store import ObjectStore


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    db: Database
    store: ObjectStore
    bus: EventBus


_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _current
    _current = context


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("no worker context installed; call workers.context.install first")
    return _current
