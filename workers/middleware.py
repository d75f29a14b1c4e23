"""Worker middleware: dead letters are recorded and announced; consumption is counted."""

from __future__ import annotations

import logging
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tunelab.context import Context
from tunelab.db.tables import DeadLetter
from tunelab.events.catalog import WorkerKind
from tunelab.events.system import MessageDead, MessageDeadData
from tunelab.metrics import EVENTS_CONSUMED
from tunelab.workers.context import current
from tunelab.workers.registry import SPECS, give_up_of

log = logging.getLogger(__name__)


def _envelope_of(message: MessageProxy) -> dict[str, Any] | None:
    """The event a subscriber's message carries (a command's carries none)."""
    arg = message.args[0] if message.args else None
    return arg if isinstance(arg, dict) and "type" in arg else None


def _event_of(message: MessageProxy) -> dict[str, Any]:
    """Workspace, id and type of the event a message is about."""
    envelope = _envelope_of(message)
    if envelope is not None:
        return envelope
    about = message.options.get("about") or {}
    return {
        "workspace": about.get("workspace"),
        "id": about.get("event_id"),
        "type": about.get("event_type"),
    }


class DeadLetters(Middleware):
    """Records a message that failed for good (its after-hook must run after Retries').

    The dead letter and its `message.dead` event are one transaction; the actor's give-up
    step (failing what the message was about) is a message of its own, retried, and sent
    again by the next worker to start if this one dies first (`resend_give_ups`): a
    give-up cannot be lost.
    """

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not message.failed:
            return
        event = _event_of(message)
        error = f"{type(exception).__name__}: {exception}"[:4000]
        retries = int(message.options.get("retries", 0))
        ctx = current()
        dead = DeadLetter(
            message_id=message.message_id,
            workspace_id=event.get("workspace"),
            queue=message.queue_name,
            actor=message.actor_name,
            event_id=event.get("id"),
            event_type=event.get("type"),
            retries=retries,
            error=error,
        )
        try:
            with ctx.db.session() as session:
                session.add(dead)
                session.flush()
                send = ctx.bus.stage(
                    session,
                    MessageDead(
                        workspace=event.get("workspace"),
                        subject=f"actors/{message.actor_name}",
                        data=MessageDeadData(
                            message_id=message.message_id,
                            actor=message.actor_name,
                            queue=message.queue_name,
                            retries=retries,
                            error=error,
                            event_id=event.get("id"),
                            event_type=event.get("type"),
                        ),
                    ),
                )
        except IntegrityError:
            return  # recorded on an earlier delivery
        log.error("message %s to %s is dead: %s", message.message_id, message.actor_name, error)
        send()
        if give_up_of(message.actor_name) is not None and event.get("id"):
            send_give_up(ctx, dead.id, message.actor_name, _envelope_of(message))


def send_give_up(
    ctx: Context, dead_letter_id: str, actor: str, envelope: dict[str, Any] | None = None
) -> None:
    spec = SPECS[actor]
    kind: WorkerKind = "cpu" if spec.worker == "cpu" else "gpu"  # trainings' on the GPU queue
    ctx.bus.send_command(kind, f"give_up_on_{kind}", dead_letter_id, envelope)


def resend_give_ups(ctx: Context, kind: WorkerKind) -> None:
    """Give-ups of this worker kind's actors that a dead worker recorded but never ran."""
    with ctx.db.session() as session:
        pending = [
            (d.id, d.actor)
            for d in session.scalars(
                select(DeadLetter).where(
                    DeadLetter.compensated_at.is_(None), DeadLetter.event_id.isnot(None)
                )
            )
            if give_up_of(d.actor) is not None and SPECS[d.actor].worker in (kind, "train")
        ]
    for dead_letter_id, actor in pending:
        send_give_up(ctx, dead_letter_id, actor)


class ConsumedMetrics(Middleware):
    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        outcome = "ok" if exception is None else "error"
        EVENTS_CONSUMED.labels(message.actor_name, outcome).inc()
