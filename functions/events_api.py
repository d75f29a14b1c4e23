"""The workspace's lifecycle events: a list with a cursor, and a live SSE stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db import Database
from tunelab.db.models import EventRecord
from tunelab.errors import Invalid, NotFound
from tunelab.functions.http import iso, respond, workspace_id

STREAM_POLL_S = 0.25


def to_json(record: EventRecord) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": record.id,
        "source": record.source,
        "type": record.type,
        "time": iso(record.time),
        "subject": record.subject,
        "workspace": record.workspace_id,
        "data": record.data,
    }


def _cursor(db: Database, workspace: str, event_id: str | None) -> int:
    if not event_id:
        return 0
    with db.session() as session:
        seq = session.scalar(select(EventRecord.seq).where(
            EventRecord.id == event_id, EventRecord.workspace_id == workspace))
    if seq is None:
        raise NotFound(f"No event with id {event_id!r} in this workspace.")
    return seq


def _after(db: Database, workspace: str, seq: int, limit: int,
           types: list[str]) -> list[EventRecord]:
    """Events after `seq`, oldest first."""
    query = select(EventRecord).where(EventRecord.workspace_id == workspace,
                                      EventRecord.seq > seq)
    if types:
        query = query.where(EventRecord.type.in_(types))
    with db.session() as session:
        return list(session.scalars(query.order_by(EventRecord.seq).limit(limit)))


def _latest(db: Database, workspace: str, limit: int, types: list[str]) -> list[EventRecord]:
    query = select(EventRecord).where(EventRecord.workspace_id == workspace)
    if types:
        query = query.where(EventRecord.type.in_(types))
    with db.session() as session:
        return list(session.scalars(query.order_by(EventRecord.seq.desc()).limit(limit)))


def list_events(request: Request) -> JSONResponse:
    """Newest first. With `after`, the (oldest) `limit` events after that id."""
    params = request.query_params
    try:
        limit = int(params.get("limit", "100"))
    except ValueError:
        limit = -1
    if not 1 <= limit <= 1000:
        raise Invalid("limit must be an integer from 1 to 1000.",
                      [{"field": "limit", "message": "out of range"}])
    types = [t for t in params.get("type", "").split(",") if t]
    db, workspace = request.app.state.db, workspace_id(request)
    if "after" in params:
        rows = _after(db, workspace, _cursor(db, workspace, params["after"]), limit + 1, types)
        has_more = len(rows) > limit
        rows = list(reversed(rows[:limit]))
    else:
        rows, has_more = _latest(db, workspace, limit, types), False
    return respond({"items": [to_json(r) for r in rows], "has_more": has_more})


async def stream_events(request: Request) -> EventSourceResponse:
    db, workspace = request.app.state.db, workspace_id(request)
    start = request.headers.get("last-event-id") or request.query_params.get("after")
    if start:
        seq = await run_in_threadpool(_cursor, db, workspace, start)
    else:
        latest = await run_in_threadpool(_latest, db, workspace, 1, [])
        seq = latest[0].seq if latest else 0

    async def events() -> AsyncIterator[dict[str, Any]]:
        nonlocal seq
        while True:
            rows = await run_in_threadpool(_after, db, workspace, seq, 500, [])
            for row in rows:
                seq = row.seq
                yield {"id": row.id, "event": row.type, "data": json.dumps(to_json(row))}
            if not rows:
                await asyncio.sleep(STREAM_POLL_S)

    return EventSourceResponse(events(), ping=15)
