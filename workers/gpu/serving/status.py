"""A service's two outcomes, each recorded with its event in one transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tunelab.db.models import Service
from tunelab.events.service import ServiceFailed, ServiceFailedData, ServiceReady, ServiceRef
from tunelab.serving.routes import announce_change
from tunelab.workers.context import WorkerContext


def mark_ready(ctx: WorkerContext, service_id: str) -> None:
    with ctx.db.session() as session:
        service = session.get(Service, service_id, with_for_update=True)
        if service is None or service.status != "deploying":
            return
        service.status, service.ready_at = "ready", datetime.now(UTC)
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
    ctx: WorkerContext,
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
        if service is None or service.status == "failed":
            return
        service.status, service.error, service.server_id = "failed", error, None
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
