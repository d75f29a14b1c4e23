"""Pipeline checks: ping every worker kind; list messages that died."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.tables import DeadLetter
from tunelab.events.system import Ping, PingData
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.times import iso


class PingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reply: bool = True


async def ping(request: Request) -> JSONResponse:
    """Publishes `system.ping`; each worker kind answers with `system.pong`.

    The body is optional; `{"reply": false}` makes the ping a pure no-op.
    """
    accepted = time.time()
    body = await read_json(request) if await request.body() else {}
    options = parse(PingRequest, body, "ping")
    event = Ping(
        workspace=workspace_id(request),
        subject="system",
        data=PingData(sent_at=accepted, reply=options.reply),
    )
    await run_in_threadpool(request.app.state.bus.publish, event)
    return respond({"event_id": event.id}, 202)


def list_dead_letters(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(DeadLetter)
            .where(DeadLetter.workspace_id == workspace_id(request))
            .order_by(DeadLetter.created_at.desc())
            .limit(500)
        )
        items = [
            {
                "message_id": d.message_id,
                "queue": d.queue,
                "actor": d.actor,
                "event_id": d.event_id,
                "event_type": d.event_type,
                "retries": d.retries,
                "error": d.error,
                "created_at": iso(d.created_at),
            }
            for d in rows
        ]
    return respond({"items": items})
