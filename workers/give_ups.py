"""Give-ups: once a message is dead, what it was about must end visibly failed (a dataset
`failed`, a task `failed`, a service `failed`) rather than stay stuck. The middleware that
records the dead letter sends this step as a message of its own, retried until it has
run; it runs the dead actor's own give-up function, once."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from tunelab.db.tables import DeadLetter, EventRecord
from tunelab.events.catalog import parse_event
from tunelab.workers.context import current
from tunelab.workers.registry import command, give_up_of

log = logging.getLogger("tunelab.worker")
RETRIES: dict[str, Any] = {"max_retries": 20, "min_backoff": 1_000, "max_backoff": 300_000}


def compensate(dead_letter_id: str, envelope: dict[str, Any] | None = None) -> None:
    """Run the give-up of a dead letter's actor on its event: the `envelope` the dead
    message carried or, when a starting worker resends it, the stored event."""
    ctx = current()
    with ctx.db.session() as session:
        dead = session.get(DeadLetter, dead_letter_id)
        if dead is None or dead.compensated_at is not None:
            return
        if envelope is None:
            record = session.scalar(select(EventRecord).where(EventRecord.id == dead.event_id))
            envelope = record.envelope() if record else None
        actor, error = dead.actor, dead.error
    hook = give_up_of(actor)
    if hook is not None and envelope is not None:
        hook(parse_event(envelope), error)  # an exception: Dramatiq retries this message
    with ctx.db.session() as session:
        dead = session.get_one(DeadLetter, dead_letter_id)
        dead.compensated_at = datetime.now(UTC)
    log.info("gave up on %s's message %s", actor, dead_letter_id)


@command("cpu", **RETRIES)
def give_up_on_cpu(dead_letter_id: str, envelope: dict[str, Any] | None = None) -> None:
    compensate(dead_letter_id, envelope)


@command("gpu", **RETRIES)
def give_up_on_gpu(dead_letter_id: str, envelope: dict[str, Any] | None = None) -> None:
    compensate(dead_letter_id, envelope)
