"""Who changed what, when: the audit middleware and `GET /api/v1/audit` (admins)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.audit import AuditTrail
from tunelab.db.tables import AuditEntry
from tunelab.errors import Invalid
from tunelab.functions.http import respond, workspace_id
from tunelab.functions.idempotency import DATA_PLANE
from tunelab.functions.responses import SentStatus
from tunelab.times import iso

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Audit:
    """Records each state-changing request its token made it through (chats are traffic,
    counted in usage instead), with the status it ended with."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGES or scope["path"] in DATA_PLANE:
            await self.app(scope, receive, send)
            return
        sent = SentStatus(send)
        try:
            await self.app(scope, receive, sent)
        finally:
            caller = scope.get("caller")
            if caller is not None:
                trail: AuditTrail = scope["app"].state.audit
                trail.record(
                    workspace_id=caller.workspace.id,
                    token_id=caller.token_id,
                    token_name=caller.token_name,
                    method=scope["method"],
                    path=scope["path"],
                    route=getattr(scope.get("route"), "path", None) or "unmatched",
                    status=sent.status or 500,
                )


def list_audit(request: Request) -> JSONResponse:
    """Newest first; `limit` (at most 500) and `before` (an entry's `at`) page back."""
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise Invalid("limit must be 1 to 500.", [{"field": "limit", "message": "1 to 500"}])
    query = select(AuditEntry).where(AuditEntry.workspace_id == workspace_id(request))
    before = request.query_params.get("before")
    if before:
        try:
            query = query.where(
                AuditEntry.at < datetime.fromisoformat(before.replace("Z", "+00:00"))
            )
        except ValueError:
            raise Invalid(
                "before must be an RFC 3339 time.", [{"field": "before", "message": "a time"}]
            ) from None
    with request.app.state.db.session() as session:
        rows = session.scalars(query.order_by(AuditEntry.at.desc()).limit(int(raw)))
        items = [
            {
                "at": iso(e.at),
                "token": e.token_name,
                "method": e.method,
                "path": e.path,
                "route": e.route,
                "status": e.status,
            }
            for e in rows
        ]
    return respond({"items": items})
