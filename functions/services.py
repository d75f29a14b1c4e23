"""Model services: deploy a model from the repository, list, inspect and delete them.

The trigger checks what it can at once (name, model, request shape) and publishes
`service.deploy_requested`; whether the service fits and which server it joins is
decided by a GPU worker, and the service moves to `ready` or `failed` with the reason.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.tables import ModelServer, Service
from tunelab.errors import Conflict, NotFound
from tunelab.events.service import ServiceDeleted, ServiceRef
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.lifecycle.services import request_deploy
from tunelab.lifecycle.specs import ServiceSpec
from tunelab.serving.routes import announce_change
from tunelab.serving_rules import DeployRequest
from tunelab.times import iso
from tunelab.views import ServiceView


def to_json(service: Service, server: ModelServer | None = None) -> dict[str, Any]:
    request = ServiceSpec.of(service).request
    return ServiceView.shown(
        {
            "name": service.name,
            "model": service.model,
            "cluster": request.cluster,
            "namespace": request.namespace,
            "resources": request.resources.model_dump(mode="json"),
            "replicas": request.replicas,
            "store": request.store,
            "status": service.status,
            "error": service.error,
            "endpoint": service.endpoint,
            "server": None
            if server is None
            else {"engine": server.engine, "status": server.status, "restarts": server.restarts},
            "created_at": iso(service.created_at),
            "ready_at": iso(service.ready_at) if service.ready_at else None,
        }
    )


def find(session: Session, workspace: str, name: str) -> Service:
    service = session.scalar(
        select(Service).where(Service.workspace_id == workspace, Service.name == name)
    )
    if service is None:
        raise NotFound(f"No service named {name!r}.")
    return service


async def create_service(request: Request) -> JSONResponse:
    spec = parse(DeployRequest, await read_json(request), "service")
    return respond(await run_in_threadpool(_create, request, spec), 202)


def _create(request: Request, spec: DeployRequest) -> dict[str, Any]:
    state = request.app.state
    try:
        with state.db.session() as session:
            service, send = request_deploy(
                state.settings, state.bus, session, workspace_id(request), spec
            )
            body = to_json(service)
    except IntegrityError:
        raise Conflict(f"A service named {spec.name!r} already exists.") from None
    send()
    return body


def list_services(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.execute(
            select(Service, ModelServer)
            .outerjoin(ModelServer, ModelServer.id == Service.server_id)
            .where(Service.workspace_id == workspace_id(request))
            .order_by(Service.created_at.desc())
        ).all()
        return respond({"items": [to_json(s, server) for s, server in rows]})


def get_service(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        service = find(session, workspace_id(request), request.path_params["name"])
        server = session.get(ModelServer, service.server_id) if service.server_id else None
        return respond(to_json(service, server))


def delete_service(request: Request) -> JSONResponse:
    """Gone at once; the GPU worker that keeps its server unloads the adapter, and stops
    the server if no service needs it any more."""
    state, workspace = request.app.state, workspace_id(request)
    with state.db.session() as session:
        service = find(session, workspace, request.path_params["name"])
        session.delete(service)
        send = state.bus.stage(
            session,
            ServiceDeleted(
                workspace=workspace,
                subject=f"services/{service.name}",
                data=ServiceRef(service_id=service.id, name=service.name, model=service.model),
            ),
        )
    send()
    announce_change(state.bus.redis)  # its chats stop at once, in every API process
    return respond({"name": service.name, "deleted": True})
