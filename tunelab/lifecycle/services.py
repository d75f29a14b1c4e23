"""A service's life: placed on a model server, then ready or failed, each change
recorded with its event in one transaction and announced to the chat routes.

One placement rule for both backends: a LoRA service joins a server of its base model
(the same engine, the same namespace) that has room for another adapter
(TUNELAB_ADAPTERS_PER_SERVER), a base model's own service joins one too, and a fully
fine-tuned model gets a server of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tunelab.clusters import clusters, placement_problems
from tunelab.context import Context
from tunelab.db.tables import Model, ModelServer, Service
from tunelab.errors import Conflict, Invalid
from tunelab.events.service import (
    ServiceDeployRequested,
    ServiceFailed,
    ServiceFailedData,
    ServicePlaced,
    ServiceReady,
    ServiceRef,
)
from tunelab.experiment_rules import span_problems
from tunelab.lifecycle.specs import ServiceSpec
from tunelab.lifecycle.states import SERVICE_LIVE, ServiceState
from tunelab.serving.routes import announce_change
from tunelab.serving.served import served
from tunelab.serving_rules import DeployRequest
from tunelab.settings import Settings


def visible_model(session: Session, workspace: str, name: str) -> Model | None:
    """The workspace's own model of that name, else a built-in one."""
    rows = session.scalars(
        select(Model).where(
            Model.name == name, or_(Model.workspace_id == workspace, Model.workspace_id.is_(None))
        )
    ).all()
    return next((m for m in rows if m.workspace_id is not None), rows[0] if rows else None)


def request_deploy(
    settings: Settings,
    bus: Any,
    session: Session,
    workspace: str,
    spec: DeployRequest,
    event_id: str | None = None,
) -> tuple[Service, Callable[[], None]]:
    """Store a deploying service and its `service.deploy_requested` in the caller's
    transaction; returns it and what sends the event once that has committed. A caller
    that may run again for the same deployment passes a derived `event_id`, so that
    `deploy_requested` can be sent again (`stage_deploy`).

    Raises Invalid for a place, resources or model that cannot be, Conflict for a model
    not ready or a name taken."""
    problems = placement_problems(settings, spec.cluster, spec.namespace)
    if problems:
        field = "cluster" if problems[0].startswith("no cluster") else "namespace"
        raise Invalid(
            problems[0][0].upper() + problems[0][1:] + ".",
            [{"field": field, "message": problems[0]}],
        )
    # Requests within limits and within the cluster: known now, as for experiments.
    spans, _ = span_problems(spec.resources, clusters(settings)[spec.cluster], "resources")
    if spans:
        fields = ", ".join(p["field"] for p in spans)
        raise Invalid(f"The service's resources are not possible: {fields}.", spans)
    model = visible_model(session, workspace, spec.model)
    if model is None:
        raise Invalid(
            f"No model named {spec.model!r} in the repository.",
            [{"field": "model", "message": f"no model {spec.model!r}"}],
        )
    if model.status != "ready":
        raise Conflict(f"Model {spec.model!r} is {model.status}, not ready to deploy.")
    if session.scalar(
        select(Service.id).where(Service.workspace_id == workspace, Service.name == spec.name)
    ):
        raise Conflict(f"A service named {spec.name!r} already exists.")
    service = Service(
        workspace_id=workspace,
        name=spec.name,
        model=model.name,
        spec={"model_id": model.id, "request": spec.model_dump(mode="json")},
        status="deploying",
    )
    session.add(service)
    session.flush()
    return service, stage_deploy(bus, session, service, event_id)


def stage_deploy(
    bus: Any, session: Session, service: Service, event_id: str | None = None
) -> Callable[[], None]:
    """Record the deploying service's `deploy_requested`; returns what sends it. With a
    derived `event_id` already recorded it only sends it again: the process that
    recorded it may have died before sending it, and a service that no model server was
    assigned to would deploy forever. Assigning is idempotent."""
    return bus.stage(  # type: ignore[no-any-return]
        session,
        ServiceDeployRequested(
            **({"id": event_id} if event_id else {}),
            workspace=service.workspace_id,
            subject=f"services/{service.name}",
            data=ServiceRef(service_id=service.id, name=service.name, model=service.model),
        ),
    )


def assign(ctx: Context, event: ServiceDeployRequested, engine: str) -> None:
    """Give the deploying service a model server by the placement rule (nothing if it
    has one, was deleted or failed meanwhile); a service whose model is gone fails."""
    with ctx.db.session() as session:
        service = session.get(Service, event.data.service_id, with_for_update=True)
        if service is None or service.status != ServiceState.DEPLOYING or service.server_id:
            return
        spec = ServiceSpec.of(service)
        model = session.get(Model, spec.model_id)
        if model is None:
            send = None
        else:
            what = served(model)
            shared = what.adapter_uri is not None or model.kind == "base"
            namespace = spec.request.namespace
            server = None
            if shared:
                server = _with_room(ctx, session, what.server_model_uri, engine, namespace)
            if server is None:
                server = ModelServer(
                    model_uri=what.server_model_uri,
                    shared=shared,
                    engine=engine,
                    namespace=namespace,
                    restarts=0,
                )
                session.add(server)
                session.flush()
            service.server_id = server.id
            send = ctx.bus.stage(session, ServicePlaced.following(event, data=event.data))
    if send is None:
        fail_service(
            ctx, event.data.service_id, "model_missing", "The service's model was deleted."
        )
    else:
        send()


def _with_room(
    ctx: Context, session: Session, model_uri: str, engine: str, namespace: str
) -> ModelServer | None:
    """The oldest shared server of the model with room. Locked: a server whose last
    service just went (its keeper is stopping it) must not be joined meanwhile."""
    live = (
        select(Service.server_id, func.count(Service.id).label("n"))
        .where(Service.status.in_(SERVICE_LIVE))
        .group_by(Service.server_id)
        .subquery()
    )
    candidates = session.execute(
        select(ModelServer, live.c.n)
        .join(live, live.c.server_id == ModelServer.id)
        .where(
            ModelServer.model_uri == model_uri,
            ModelServer.shared.is_(True),
            ModelServer.engine == engine,
            ModelServer.namespace == namespace,
        )
        .order_by(ModelServer.created_at)
        .with_for_update(of=ModelServer)
    )
    # A server with no live service is being stopped: the join above leaves it out.
    return next((s for s, n in candidates if n < ctx.settings.adapters_per_server), None)


def mark_ready(ctx: Context, service_id: str) -> None:
    with ctx.db.session() as session:
        service = session.get(Service, service_id, with_for_update=True)
        if service is None or service.status != ServiceState.DEPLOYING:
            return
        service.status, service.ready_at = ServiceState.READY, datetime.now(UTC)
        service.endpoint = f"/v1/chat/completions (model: {service.name})"
        send = ctx.bus.stage(
            session,
            ServiceReady(
                workspace=service.workspace_id,
                subject=f"services/{service.name}",
                data=ServiceRef(service_id=service_id, name=service.name, model=service.model),
            ),
        )
    send()
    announce_change(ctx.bus.redis)


def fail_service(
    ctx: Context,
    service_id: str,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
) -> None:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    with ctx.db.session() as session:
        service = session.get(Service, service_id, with_for_update=True)
        if service is None or service.status == ServiceState.FAILED:
            return
        service.status, service.error, service.server_id = ServiceState.FAILED, error, None
        send = ctx.bus.stage(
            session,
            ServiceFailed(
                workspace=service.workspace_id,
                subject=f"services/{service.name}",
                data=ServiceFailedData(
                    service_id=service_id, name=service.name, model=service.model, error=error
                ),
            ),
        )
    send()
    announce_change(ctx.bus.redis)
