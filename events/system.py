"""Operational events: pipeline pings and dead messages."""

from __future__ import annotations

import time
from typing import Literal

from tunelab.events.envelope import Event, Payload


class PingData(Payload):
    sent_at: float
    """Sender's `time.time()`, so a handler can report queueing latency."""
    reply: bool = True
    """False makes the ping a pure no-op (for throughput measurements)."""


class Ping(Event):
    """A no-op event that every worker kind answers: proves the pipeline is alive."""

    type: Literal["system.ping"] = "system.ping"
    data: PingData


class PongData(Payload):
    ping_id: str
    worker: Literal["cpu", "gpu"]
    latency_ms: float


class Pong(Event):
    type: Literal["system.pong"] = "system.pong"
    data: PongData

    @classmethod
    def answering(cls, ping: Ping, worker: Literal["cpu", "gpu"]) -> Pong:
        latency_ms = (time.time() - ping.data.sent_at) * 1000
        return cls.following(
            ping,
            by=worker,
            data=PongData(ping_id=ping.id, worker=worker, latency_ms=round(latency_ms, 3)),
        )


class MessageDeadData(Payload):
    message_id: str
    actor: str
    queue: str
    retries: int
    error: str
    event_id: str | None = None
    event_type: str | None = None


class MessageDead(Event):
    """A message failed all its retries; it is kept in dead letters, never dropped."""

    type: Literal["message.dead"] = "message.dead"
    data: MessageDeadData

    def to_webhooks(self) -> bool:
        # A dead webhook delivery sent on to webhooks could fail and die in turn, forever.
        return self.data.actor != "deliver_webhook"
