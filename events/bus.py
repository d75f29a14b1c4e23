"""Publishing: record the event, then hand it to every actor that consumes it.

Recording first means `GET /api/v1/events` and webhooks see every event even if no
actor consumes it; a repeated publish of the same event id records nothing new.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Message
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tunelab.db import Database
from tunelab.db.tables import EventRecord, Webhook, WebhookDelivery, new_id, utcnow
from tunelab.events.catalog import ROUTES
from tunelab.events.envelope import Event
from tunelab.metrics import EVENTS_PUBLISHED

DELIVER_WEBHOOK_ACTOR = "deliver_webhook"


class EventBus:
    def __init__(
        self,
        broker: Broker,
        db: Database,
        queue_for: Callable[[str], str],
        backend: str = "local",
    ) -> None:
        self.broker = broker
        self.db = db
        self.queue_for = queue_for
        self.backend = backend

    @property
    def redis(self) -> Any:
        """The broker's Redis client (None with a stub broker, as in tests)."""
        return getattr(self.broker, "client", None)

    def publish(self, event: Event) -> None:
        """Record `event` and hand it to its consumers."""
        try:
            with self.db.session() as session:
                send = self.stage(session, event)
        except IntegrityError:
            with self.db.session() as session:
                if _recorded(session, event):
                    return  # recorded by a concurrent redelivery, which sends it
            raise
        send()

    def stage(self, session: Session, event: Event) -> Callable[[], None]:
        """Record `event` in the caller's transaction; returns what sends it, to be
        called once that transaction has committed.

        Recording beside the state change it announces means a reader never sees the
        change without its event. A repeat of a recorded event (a redelivery, perhaps
        after a crash between commit and send) is sent to its consumers again, which
        are idempotent, but not recorded or delivered to webhooks twice. A fresh event
        (a random id) cannot be a repeat: it costs no look-up.
        """
        if not event.fresh and _recorded(session, event):
            unsent = list(
                session.scalars(
                    select(WebhookDelivery.id).where(
                        WebhookDelivery.event_id == event.id,
                        WebhookDelivery.status.in_(("pending", "retrying")),
                    )
                )
            )
            return lambda: self._send_all(event, unsent)
        body = event.to_message()
        # Core inserts, not ORM objects: publishing is the API's hottest write.
        session.execute(
            insert(EventRecord).values(
                id=event.id,
                workspace_id=event.workspace,
                type=event.type,
                source=event.source,
                subject=event.subject,
                time=event.time,
                data=body["data"],
            )
        )
        delivery_ids: list[str] = []
        if event.workspace is not None and event.to_webhooks():
            hooks = session.execute(
                select(Webhook.id, Webhook.events).where(Webhook.workspace_id == event.workspace)
            )
            wanted = [hook for hook, events in hooks if event.type in events or "*" in events]
            if wanted:
                delivery_ids = [new_id() for _ in wanted]
                session.execute(
                    insert(WebhookDelivery),
                    [
                        {
                            "id": delivery_id,
                            "webhook_id": hook,
                            "event_id": event.id,
                            "event_type": event.type,
                            "status": "pending",
                            "attempts": [],
                            "created_at": utcnow(),
                        }
                        for delivery_id, hook in zip(delivery_ids, wanted, strict=True)
                    ],
                )
        return lambda: self._send_all(event, delivery_ids, body)

    def retract(self, session: Session, event: Event) -> None:
        """Remove a recorded event that could not be sent (its cause was undone too)."""
        session.query(WebhookDelivery).filter_by(event_id=event.id).delete()
        session.query(EventRecord).filter_by(id=event.id).delete()

    def _send_all(
        self, event: Event, delivery_ids: list[str], body: dict[str, Any] | None = None
    ) -> None:
        body = body or event.to_message()
        for route in ROUTES.get(event.type, ()):
            if route.backend in (None, self.backend):
                self._send(route.worker, route.actor, body)
        # A delivery message carries only its id; the options say which event it is
        # for, so a dead delivery is still shown in the right workspace.
        about = {"workspace": event.workspace, "event_id": event.id, "event_type": event.type}
        for delivery_id in delivery_ids:
            self._send("cpu", DELIVER_WEBHOOK_ACTOR, delivery_id, about=about)
        EVENTS_PUBLISHED.labels(event.type).inc()

    def send_command(self, worker: str, actor: str, *args: object) -> None:
        """A plain message to a command actor (not an event) on a worker kind's queue."""
        self._send(worker, actor, *args)

    def _send(
        self, worker: str, actor: str, *args: object, about: dict[str, str | None] | None = None
    ) -> None:
        self.broker.enqueue(
            Message(
                queue_name=self.queue_for(worker),
                actor_name=actor,
                args=args,
                kwargs={},
                options={"about": about} if about else {},
            )
        )


def _recorded(session: Session, event: Event) -> bool:
    return session.scalar(select(EventRecord.seq).where(EventRecord.id == event.id)) is not None
