"""The event envelope, with CloudEvents attribute names (cloudevents/sdk-python)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

# Follow-up events get ids derived from their cause, so a redelivered message that
# publishes "the same outcome" publishes the very same event, which is then recorded once.
_FOLLOW_NS = uuid.UUID("6f1c2a4e-6d0b-4a43-9a59-0e3c2d1b7a10")


def derived_id(key: str) -> str:
    """An event id that is the same whenever the same thing is announced again."""
    return uuid.uuid5(_FOLLOW_NS, key).hex


def _now() -> datetime:
    return datetime.now(UTC)


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(BaseModel):
    """Base of every event; subclasses fix `type` to a Literal and type `data`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: str = "1.0"
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source: str = "tunelab"
    type: str
    time: datetime = Field(default_factory=_now)
    subject: str | None = None
    workspace: str | None = None
    """Extension attribute: the workspace id the event belongs to."""
    data: Any

    @classmethod
    def following(cls, cause: Event, *, by: str = "", **fields: Any) -> Self:
        """A new event caused by `cause`, with an id that is the same on every redelivery.

        `by` tells apart several consumers that each answer the same cause.
        """
        event_type = cls.model_fields["type"].default
        event_id = derived_id(f"{cause.id}/{event_type}/{by}")
        fields.setdefault("workspace", cause.workspace)
        fields.setdefault("subject", cause.subject)
        return cls(id=event_id, **fields)

    @property
    def fresh(self) -> bool:
        """Whether the id was made here, at random (not derived, not parsed from a
        message): no earlier delivery can have recorded this event."""
        return "id" not in self.model_fields_set

    def to_webhooks(self) -> bool:
        """Whether webhooks receive this event."""
        return True

    def to_message(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
