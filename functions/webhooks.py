"""Webhook subscriptions and their delivery log."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.tables import Webhook, WebhookDelivery
from tunelab.errors import Conflict, Invalid, NotFound
from tunelab.events.catalog import EVENT_TYPES
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.names import Name
from tunelab.net import AddressRefused, check_address
from tunelab.times import iso


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    url: AnyHttpUrl
    events: list[str] = Field(min_length=1)

    @field_validator("events")
    @classmethod
    def _known_types(cls, events: list[str]) -> list[str]:
        unknown = [e for e in events if e != "*" and e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {list(EVENT_TYPES)} or '*'")
        return events


def to_json(hook: Webhook, with_secret: bool = False) -> dict[str, Any]:
    body = {
        "name": hook.name,
        "url": hook.url,
        "events": hook.events,
        "created_at": iso(hook.created_at),
    }
    if with_secret:
        body["secret"] = hook.secret
    return body


def _find(session: Session, workspace: str, name: str) -> Webhook:
    hook = session.scalar(
        select(Webhook).where(Webhook.workspace_id == workspace, Webhook.name == name)
    )
    if hook is None:
        raise NotFound(f"No webhook named {name!r} in this workspace.")
    return hook


async def create_webhook(request: Request) -> JSONResponse:
    spec = parse(WebhookSpec, await read_json(request), "webhook")
    return respond(await run_in_threadpool(_create, request, spec), 201)


def _create(request: Request, spec: WebhookSpec) -> dict[str, Any]:
    try:
        check_address(str(spec.url), request.app.state.settings.webhook_allow_private)
    except AddressRefused as exc:
        raise Invalid(
            f"The webhook URL is refused: {exc}", [{"field": "url", "message": str(exc)}]
        ) from None
    hook = Webhook(
        workspace_id=workspace_id(request),
        name=spec.name or f"webhook-{secrets.token_hex(4)}",
        url=str(spec.url),
        events=spec.events,
        secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
    )
    try:
        with request.app.state.db.session() as session:
            session.add(hook)
    except IntegrityError:
        raise Conflict(f"A webhook named {hook.name!r} already exists.") from None
    return to_json(hook, with_secret=True)


def list_webhooks(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(Webhook)
            .where(Webhook.workspace_id == workspace_id(request))
            .order_by(Webhook.created_at.desc())
        )
        return respond({"items": [to_json(h) for h in rows]})


def get_webhook(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        return respond(to_json(_find(session, workspace_id(request), request.path_params["name"])))


def delete_webhook(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        hook = _find(session, workspace_id(request), request.path_params["name"])
        session.delete(hook)
    return respond({"name": hook.name, "deleted": True})


def list_deliveries(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        hook = _find(session, workspace_id(request), request.path_params["name"])
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == hook.id)
            .order_by(WebhookDelivery.created_at.desc())
        )
        items = [
            {
                "id": d.id,
                "event_id": d.event_id,
                "event_type": d.event_type,
                "status": d.status,
                "attempts": d.attempts,
                "created_at": iso(d.created_at),
            }
            for d in rows
        ]
    return respond({"items": items})
