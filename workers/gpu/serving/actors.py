"""The GPU worker's serving actors: placing services and waking the server keepers.
Chats do not come here: the API sends them straight to the servers (tunelab.serving)."""

from __future__ import annotations

from tunelab.events.service import ServiceDeployRequested
from tunelab.lifecycle.services import fail_service
from tunelab.workers.context import current
from tunelab.workers.gpu.serving.keeper import Reconciler
from tunelab.workers.gpu.serving.placement import place
from tunelab.workers.registry import subscriber


def _give_up_placing(event: ServiceDeployRequested, error: str) -> None:
    fail_service(current(), event.data.service_id, "deploy_failed", error)


@subscriber("service.deploy_requested", "gpu", on_give_up=_give_up_placing, max_retries=3)
def place_service(event: ServiceDeployRequested) -> None:
    ctx = current()
    place(ctx, event, ctx.bus.redis)


@subscriber("service.placed", "gpu", max_retries=0)
def wake_servers_on_placed(event: object) -> None:
    Reconciler.poke_current()


@subscriber("service.deleted", "gpu", max_retries=0)
def wake_servers_on_deleted(event: object) -> None:
    Reconciler.poke_current()
