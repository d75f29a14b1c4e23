"""The GPU worker's serving actors: placing services, waking the server keepers, and
answering chats on a queue of their own (chats wait on servers, not on a GPU)."""

from __future__ import annotations

import logging

import dramatiq

from tunelab.events.service import ChatRequested, ServiceDeployRequested
from tunelab.workers.context import current
from tunelab.workers.gpu.serving.chat import ChatError, Relay, answer
from tunelab.workers.gpu.serving.keeper import poke
from tunelab.workers.gpu.serving.placement import place
from tunelab.workers.gpu.serving.status import fail_service
from tunelab.workers.registry import subscriber

log = logging.getLogger("tunelab.serving")


def _redis() -> object:
    return getattr(dramatiq.get_broker(), "client", None)


def _give_up_placing(event: ServiceDeployRequested, error: str) -> None:
    fail_service(current(), event.data.service_id, "deploy_failed", error)


@subscriber("service.deploy_requested", "gpu", on_give_up=_give_up_placing, max_retries=3)
def place_service(event: ServiceDeployRequested) -> None:
    place(current(), event, _redis())


@subscriber("service.placed", "gpu", max_retries=0)
def wake_servers_on_placed(event: object) -> None:
    poke()


@subscriber("service.deleted", "gpu", max_retries=0)
def wake_servers_on_deleted(event: object) -> None:
    poke()


@subscriber("chat.requested", "chat", max_retries=0, time_limit=3_600_000)
def answer_chat(event: ChatRequested) -> None:
    relay = Relay(_redis(), event.data.request_id)
    try:
        answer(current(), event, relay)
    except ChatError as exc:
        relay.put("error", code=exc.code, message=exc.message)
    except Exception as exc:  # the asker must hear of it, not wait out its timeout
        log.exception("chat %s failed", event.data.request_id)
        relay.put("error", code="internal_error", message=f"The chat failed: {exc}.")
