"""The clients a process's work needs (settings, database, object store, event bus),
made once per process and passed to whatever does the work: actors, the Kubernetes
backend, a training pod, the HTTP functions."""

from __future__ import annotations

from dataclasses import dataclass

from dramatiq import Broker

from tunelab.db import Database
from tunelab.events.broker import queue_name
from tunelab.events.bus import EventBus
from tunelab.settings import Settings
from tunelab.store import ObjectStore, open_store


@dataclass(frozen=True)
class Context:
    settings: Settings
    db: Database
    store: ObjectStore
    bus: EventBus


def open_context(
    settings: Settings,
    broker: Broker,
    *,
    db: Database | None = None,
    store: ObjectStore | None = None,
) -> Context:
    """The clients of a process that publishes on `broker`; those not passed in are made
    from `settings`."""
    db = db or Database(settings.effective_database_url)
    bus = EventBus(broker, db, lambda worker: queue_name(settings, worker), settings.backend)
    return Context(settings=settings, db=db, store=store or open_store(settings), bus=bus)
