"""Placing a service: check that it fits, then give it a model server.

A LoRA service joins a server of its base model that has room for another adapter; a
base model's own service joins one too; a fully fine-tuned model gets a server of its
own. Whether it fits is checked here, where the model's files are at hand: a service
that cannot fit ends `failed` with the reason instead of never starting.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from tunelab.clusters import clusters
from tunelab.db.models import Model, ModelServer, Service
from tunelab.events.service import ServiceDeployRequested, ServicePlaced
from tunelab.serving.served import served
from tunelab.serving_rules import (
    DeployRequest,
    engine_of,
    fit_problems,
    memory_request,
    weights_bytes,
)
from tunelab.workers.context import WorkerContext
from tunelab.workers.gpu.serving.keeper import LIVE, poke
from tunelab.workers.gpu.serving.models import local_dir
from tunelab.workers.gpu.serving.status import fail_service


def place(ctx: WorkerContext, event: ServiceDeployRequested, client: object) -> None:
    with ctx.db.session() as session:
        service = session.get(Service, event.data.service_id)
        if service is None or service.status != "deploying" or service.server_id:
            return  # deleted, failed, or placed by an earlier delivery
        model = session.get(Model, service.spec["model_id"])
        request = DeployRequest.model_validate(service.spec["request"])

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
        shared = what.adapter_uri is not None or model.kind == "base"
        engine = engine_of(ctx.settings) if request.engine == "auto" else request.engine
        _assign(ctx, event, what.server_model_uri, shared, engine)
    finally:
        if lock is not None:
            lock.release()
    poke()


def _memory_in_use(ctx: WorkerContext, cluster: str, service_id: str) -> float:
    """Memory requested by the cluster's other live services."""
    with ctx.db.session() as session:
        others = session.scalars(
            select(Service).where(Service.status.in_(LIVE), Service.id != service_id)
        ).all()
        return sum(
            memory_request(s.spec["request"])
            for s in others
            if s.spec["request"].get("cluster", "local") == cluster
        )


def _assign(
    ctx: WorkerContext,
    event: ServiceDeployRequested,
    model_uri: str,
    shared: bool,
    engine: str,
) -> None:
    with ctx.db.session() as session:
        service = session.get(Service, event.data.service_id, with_for_update=True)
        if service is None or service.status != "deploying" or service.server_id:
            return
        server = None
        if shared:
            counts = (
                select(ModelServer, func.count(Service.id))
                .outerjoin(
                    Service, (Service.server_id == ModelServer.id) & Service.status.in_(LIVE)
                )
                .where(
                    ModelServer.model_uri == model_uri,
                    ModelServer.shared.is_(True),
                    ModelServer.engine == engine,
                )
                .group_by(ModelServer.id)
                .order_by(ModelServer.created_at)
            )
            # A server with no live service is being stopped by its keeper: not joined.
            server = next(
                (s for s, n in session.execute(counts) if 0 < n < ctx.settings.adapters_per_server),
                None,
            )
        if server is None:
            server = ModelServer(model_uri=model_uri, shared=shared, engine=engine, restarts=0)
            session.add(server)
            session.flush()
        service.server_id = server.id
        send = ctx.bus.stage(session, ServicePlaced.following(event, data=event.data))
    send()
