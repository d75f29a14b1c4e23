"""Model service and chat events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelab.events.envelope import Event, Payload


class ServiceRef(Payload):
    service_id: str
    name: str
    model: str


class ServiceDeployRequested(Event):
    type: Literal["service.deploy_requested"] = "service.deploy_requested"
    data: ServiceRef


class ServicePlaced(Event):
    """A service was given a model server; the GPU workers start it or load into it."""

    type: Literal["service.placed"] = "service.placed"
    data: ServiceRef

    def to_webhooks(self) -> bool:
        return False


class ServiceReady(Event):
    type: Literal["service.ready"] = "service.ready"
    data: ServiceRef


class ServiceFailedData(ServiceRef):
    error: dict[str, Any]


class ServiceFailed(Event):
    type: Literal["service.failed"] = "service.failed"
    data: ServiceFailedData


class ServiceDeleted(Event):
    type: Literal["service.deleted"] = "service.deleted"
    data: ServiceRef


class ChatSettings(Payload):
    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=128, ge=1, le=8192)
    stop: list[str] = Field(default_factory=list, max_length=8)


class ChatRequestedData(Payload):
    request_id: str
    """Names the Redis stream the answer is written to, piece by piece."""
    service_id: str
    service: str
    messages: list[dict[str, str]]
    settings: ChatSettings = Field(default_factory=ChatSettings)


class ChatRequested(Event):
    type: Literal["chat.requested"] = "chat.requested"
    data: ChatRequestedData

    def to_webhooks(self) -> bool:
        return False


class ChatUsage(Payload):
    prompt_tokens: int
    completion_tokens: int


class ChatAnsweredData(Payload):
    request_id: str
    service: str
    usage: ChatUsage
    latency_ms: float
    tokens_per_second: float
    finish_reason: str | None = None


class ChatAnswered(Event):
    type: Literal["chat.answered"] = "chat.answered"
    data: ChatAnsweredData
