"""Placing a service on this machine's model servers: check that it fits, then give it a
server by the placement rule (tunelab.lifecycle.services.assign). Whether it fits is
checked here, where the model's files are at hand: a service that cannot fit ends
`failed` with the reason instead of never starting.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tunelab.clusters import clusters
from tunelab.context import Context
from tunelab.db.tables import Model, Service
from tunelab.events.service import ServiceDeployRequested
from tunelab.lifecycle.services import assign, fail_service
from tunelab.lifecycle.specs import ServiceSpec
from tunelab.lifecycle.states import SERVICE_LIVE, ServiceState
from tunelab.serving.folders import local_dir
from tunelab.serving.served import served
from tunelab.serving_rules import (
    engine_of,
    fit_problems,
    memory_request,
    weights_bytes,
)
from tunelab.workers.gpu.serving.keeper import Reconciler


def place(ctx: Context, event: ServiceDeployRequested, client: object) -> None:
    with ctx.db.session() as session:
        service = session.get(Service, event.data.service_id)
        if service is None or service.status != ServiceState.DEPLOYING or service.server_id:
            return  # deleted, failed, or placed by an earlier delivery
        spec = ServiceSpec.of(service)
        model = session.get(Model, spec.model_id)
        request = spec.request

    def fail(code: str, message: str, details: list[dict[str, Any]]) -> None:
        fail_service(ctx, event.data.service_id, code, message, details)

    if model is None:
        fail("model_missing", "The service's model was deleted.", [])
        return
    what = served(model)
    try:
        model_dir = local_dir(ctx, what.server_model_uri)
    except FileNotFoundError as exc:
        fail("model_unavailable", f"The model's files cannot be read: {exc}.", [])
        return
    # Fit and placement under one lock: two deploys must not both count the same free
    # memory, nor both start a server where one would do.
    lock = client.lock("tunelab:placement", timeout=60) if client else None  # type: ignore[attr-defined]
    if lock is not None:
        lock.acquire()
    try:
        cluster = clusters(ctx.settings)[request.cluster]
        in_use = _memory_in_use(ctx, request.cluster, event.data.service_id)
        weights = weights_bytes(model_dir)
        problems = fit_problems(ctx.settings, request, cluster, weights, in_use)
        if problems:
            summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            fail("does_not_fit", f"The service cannot run: {summary}.", problems)
            return
        engine = engine_of(ctx.settings) if request.engine == "auto" else request.engine
        assign(ctx, event, engine)
    finally:
        if lock is not None:
            lock.release()
    Reconciler.poke_current()


def _memory_in_use(ctx: Context, cluster: str, service_id: str) -> float:
    """Memory requested by the cluster's other live services."""
    with ctx.db.session() as session:
        others = session.scalars(
            select(Service).where(Service.status.in_(SERVICE_LIVE), Service.id != service_id)
        ).all()
        requests = [ServiceSpec.of(s).request for s in others]
        return sum(memory_request(r) for r in requests if r.cluster == cluster)
