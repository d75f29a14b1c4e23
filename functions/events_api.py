"""The workspace's lifecycle events: a list with a cursor, and a live SSE stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import func, select
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db import Database
from tunelab.db.tables import EventRecord
from tunelab.errors import Invalid, NotFound
from tunelab.functions.http import respond, workspace_id

STREAM_POLL_S = 0.25


def _cursor(db: Database, workspace: str, event_id: str | None) -> int:
    if not event_id:
        return 0
    with db.session() as session:
        seq = session.scalar(
            select(EventRecord.seq).where(
                EventRecord.id == event_id, EventRecord.workspace_id == workspace
            )
        )
    if seq is None:
        raise NotFound(f"No event with id {event_id!r} in this workspace.")
    return seq


def _after(
    db: Database, workspace: str | None, seq: int, limit: int, types: list[str]
) -> list[EventRecord]:
    """Events after `seq`, oldest first; of every workspace when `workspace` is None."""
    query = select(EventRecord).where(EventRecord.seq > seq)
    if workspace is not None:
        query = query.where(EventRecord.workspace_id == workspace)
    if types:
        query = query.where(EventRecord.type.in_(types))
    with db.session() as session:
        return list(session.scalars(query.order_by(EventRecord.seq).limit(limit)))


def _newest_seq(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.max(EventRecord.seq))) or 0)


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
        raise Invalid(
            "limit must be an integer from 1 to 1000.",
            [{"field": "limit", "message": "out of range"}],
        )
    types = [t for t in params.get("type", "").split(",") if t]
    db, workspace = request.app.state.db, workspace_id(request)
    if "after" in params:
        rows = _after(db, workspace, _cursor(db, workspace, params["after"]), limit + 1, types)
        has_more = len(rows) > limit
        rows = list(reversed(rows[:limit]))
    else:
        rows, has_more = _latest(db, workspace, limit, types), False
    return respond({"items": [r.envelope() for r in rows], "has_more": has_more})


class StreamCursor:
    """Where a live stream stands, safe against sequence numbers committed out of order.

    Two processes can insert events with seq 7 and 8 and commit 8 first; a plain
    "seq > last seen" cursor would then skip 7 forever. This cursor only moves past a
    gap once the gap is filled or has stayed open for GAP_WAIT_S (a rolled-back insert
    leaves a gap that never fills). Sequence numbers are shared by all workspaces, so
    the cursor sees every event and the stream filters afterwards.
    """

    GAP_WAIT_S = 2.0

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.sent: set[int] = set()
        self.gap_since: float | None = None

    def fresh(self, rows: list[EventRecord]) -> list[EventRecord]:
        """The rows not sent before; moves the cursor as far as it safely can."""
        new = [row for row in rows if row.seq not in self.sent]
        self.sent.update(row.seq for row in new)
        self._advance()
        if not self.sent:
            self.gap_since = None
            return new
        now = time.monotonic()
        if self.gap_since is None:
            self.gap_since = now
        elif now - self.gap_since > self.GAP_WAIT_S:
            self.seq = min(self.sent) - 1  # give up on the gap
            self._advance()
            self.gap_since = now if self.sent else None
        return new

    def _advance(self) -> None:
        while self.seq + 1 in self.sent:
            self.seq += 1
            self.sent.discard(self.seq)


async def stream_events(request: Request) -> EventSourceResponse:
    db, workspace = request.app.state.db, workspace_id(request)
    start = request.headers.get("last-event-id") or request.query_params.get("after")
    if start:
        seq = await run_in_threadpool(_cursor, db, workspace, start)
    else:
        seq = await run_in_threadpool(_newest_seq, db)
    cursor = StreamCursor(seq)

    async def events() -> AsyncIterator[dict[str, Any]]:
        while True:
            rows = await run_in_threadpool(_after, db, None, cursor.seq, 500, [])
            new = [row for row in cursor.fresh(rows) if row.workspace_id == workspace]
            for row in new:
                yield {"id": row.id, "event": row.type, "data": json.dumps(row.envelope())}
            if not new:
                await asyncio.sleep(STREAM_POLL_S)

    return EventSourceResponse(events(), ping=15)
