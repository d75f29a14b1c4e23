"""Worker middleware: dead letters are recorded and announced; consumption is counted."""

from __future__ import annotations

import logging
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from sqlalchemy.exc import IntegrityError

from tunelab.db.models import DeadLetter
from tunelab.events.catalog import parse_event
from tunelab.events.system import MessageDead, MessageDeadData
from tunelab.metrics import EVENTS_CONSUMED
from tunelab.workers.context import current
from tunelab.workers.registry import GIVE_UP

log = logging.getLogger(__name__)


def _event_of(message: MessageProxy) -> dict[str, Any]:
    """Workspace, id and type of the event a message is about."""
    arg = message.args[0] if message.args else None
    if isinstance(arg, dict) and "type" in arg:
        return arg
    about = message.options.get("about") or {}
    return {
        "workspace": about.get("workspace"),
        "id": about.get("event_id"),
        "type": about.get("event_type"),
    }


class DeadLetters(Middleware):
    """Records a message that failed for good (its after-hook must run after Retries')."""

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
        error = f"{type(exception).__name__}: {exception}"
        retries = int(message.options.get("retries", 0))
        ctx = current()
        try:
            with ctx.db.session() as session:
                session.add(
                    DeadLetter(
                        message_id=message.message_id,
                        workspace_id=event.get("workspace"),
                        queue=message.queue_name,
                        actor=message.actor_name,
                        event_id=event.get("id"),
                        event_type=event.get("type"),
                        retries=retries,
                        error=error[:4000],
                    )
                )
        except IntegrityError:
            return  # recorded on an earlier delivery
        log.error("message %s to %s is dead: %s", message.message_id, message.actor_name, error)
        give_up = GIVE_UP.get(message.actor_name)
        if give_up is not None and event:
            give_up(parse_event(event), error)
        ctx.bus.publish(
            MessageDead(
                workspace=event.get("workspace"),
                subject=f"actors/{message.actor_name}",
                data=MessageDeadData(
                    message_id=message.message_id,
                    actor=message.actor_name,
                    queue=message.queue_name,
                    retries=retries,
                    error=error[:4000],
                    event_id=event.get("id"),
                    event_type=event.get("type"),
                ),
            )
        )


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
