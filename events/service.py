"""Model service events. Chats are traffic, not lifecycle: they are not events."""

from __future__ import annotations

from typing import Any, Literal

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
