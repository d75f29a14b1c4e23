"""Idempotency-Key replay: a POST repeated with the same key and body gets the first
response (the IETF draft `Idempotency-Key` header, as Stripe and OpenAI use it)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.db import Database
from tunelab.db.tables import IdempotencyKey
from tunelab.errors import (
    BadRequest,
    Conflict,
    Invalid,
)
from tunelab.functions.boundary import parse_json
from tunelab.functions.responses import error_response

DATA_PLANE = frozenset({"/v1/chat/completions", "/api/v1/chat/compare"})
"""Chats: never replayed from an Idempotency-Key (its stored response would keep the
chat's text), each is simply answered again."""
MAX_KEY_CHARS = 255
ABANDONED_AFTER = timedelta(minutes=10)
"""An Idempotency-Key claimed this long ago without an answer is taken over."""


class Idempotency:
    """A POST repeated with the same Idempotency-Key and body gets the first response.

    The body is spooled to disk while it is hashed, so a 50 MB upload is never held in
    memory; the same key with another body is 422, and while the first request is still
    running a repeat is 409. Responses of 5xx (and 413) are not kept, so the client may
    retry.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or "workspace" not in scope
            or scope["path"] in DATA_PLANE
        ):
            await self.app(scope, receive, send)
            return
        key = Headers(scope=scope).get("idempotency-key")
        if key is None:
            await self.app(scope, receive, send)
            return
        if not 0 < len(key) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in key):
            refused = BadRequest(
                f"An Idempotency-Key is 1 to {MAX_KEY_CHARS} printable ASCII characters.",
                [
                    {
                        "field": "Idempotency-Key",
                        "message": f"{len(key)} characters, or not printable",
                    }
                ],
            )
            await error_response(scope["path"], refused)(scope, receive, send)
            return
        db: Database = scope["app"].state.db
        workspace_id = scope["workspace"].id
        # Spooled, not held: an upload can be 160 MB (BodyLimit has bounded it already).
        with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
            more = True
            while more:
                message = await receive()
                spool.write(message.get("body", b""))
                more = message.get("more_body", False)
            request_hash = _request_hash(scope, spool)

            replay = await run_in_threadpool(_claim, scope, db, workspace_id, key, request_hash)
            if replay is not None:
                await replay(scope, receive, send)
                return

            spool.seek(0)

            replayed = False

            async def replay_body() -> Message:
                nonlocal replayed
                if replayed:  # the body is used up: what comes next is the disconnect
                    return await receive()
                chunk = spool.read(1 << 16)
                replayed = len(chunk) < 1 << 16
                return {"type": "http.request", "body": chunk, "more_body": not replayed}

            captured: dict[str, Any] = {"status": 500, "body": b"", "type": None}

            async def capture(message: Message) -> None:
                if message["type"] == "http.response.start":
                    captured["status"] = message["status"]
                    captured["type"] = Headers(raw=message["headers"]).get("content-type")
                elif message["type"] == "http.response.body":
                    captured["body"] += message.get("body", b"")
                await send(message)

            try:
                await self.app(scope, replay_body, capture)
            except BaseException:
                await run_in_threadpool(_release, db, workspace_id, key)
                raise
            # A failure may pass, so the client may retry; a body over its limit was never
            # read whole, so it was never a request to repeat: neither is kept.
            if captured["status"] >= 500 or captured["status"] == 413:
                await run_in_threadpool(_release, db, workspace_id, key)
            else:
                await run_in_threadpool(_complete, db, workspace_id, key, captured)


def _request_hash(scope: Scope, spool: IO[bytes]) -> str:
    """Hash of method, path, query and body: of a JSON body as parsed (the same request
    reformatted is the same request), of another blind to a multipart's random boundary."""
    digest = hashlib.sha256(f"{scope['method']} {scope['path']}?".encode())
    digest.update(scope.get("query_string", b""))
    content_type = Headers(scope=scope).get("content-type", "")
    if content_type.startswith("application/json"):
        spool.seek(0)
        raw = spool.read()
        try:
            parsed = parse_json(raw)
        except BadRequest:  # the handler refuses it; any hash will do
            digest.update(raw)
        else:
            canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
            digest.update(canonical.encode())
        return digest.hexdigest()
    _, _, boundary = content_type.partition("boundary=")
    marker = boundary.strip('"').encode()
    spool.seek(0)
    keep = max(len(marker) - 1, 0)  # a marker may be split across two chunks
    carry = b""
    while chunk := spool.read(1 << 16):
        data = (carry + chunk).replace(marker, b"") if marker else chunk
        carry, data = (data[-keep:], data[:-keep]) if keep else (b"", data)
        digest.update(data)
    digest.update(carry)
    return digest.hexdigest()


def _claim(
    scope: Scope, db: Database, workspace_id: str, key: str, request_hash: str
) -> Response | None:
    """Claim the key for this request, or return the response a repeat must get."""
    try:
        with db.session() as session:
            row = session.scalar(
                select(IdempotencyKey).where(
                    IdempotencyKey.workspace_id == workspace_id, IdempotencyKey.key == key
                )
            )
            if row is None:
                session.add(
                    IdempotencyKey(workspace_id=workspace_id, key=key, request_hash=request_hash)
                )
                return None
    except IntegrityError:
        return error_response(
            scope["path"], Conflict("A request with this Idempotency-Key is still in progress.")
        )
    if row.request_hash != request_hash:
        return error_response(
            scope["path"],
            Invalid(
                "This Idempotency-Key was used with another request body; "
                "use a new key for a new request.",
                [{"field": "Idempotency-Key", "message": "reused"}],
            ),
        )
    if row.status_code is None:
        age = datetime.now(UTC) - row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC)
        if age < ABANDONED_AFTER:
            in_progress = Conflict("A request with this Idempotency-Key is still in progress.")
            return error_response(scope["path"], in_progress)
        # The first request died without an answer (its process was killed): take over.
        with db.session() as session:
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row.id)
                .values(created_at=datetime.now(UTC))
            )
        return None
    headers = {"idempotent-replayed": "true"}
    return Response(
        row.response_body, status_code=row.status_code, media_type=row.content_type, headers=headers
    )


def _complete(db: Database, workspace_id: str, key: str, captured: dict[str, Any]) -> None:
    with db.session() as session:
        row = session.scalar(
            select(IdempotencyKey).where(
                IdempotencyKey.workspace_id == workspace_id, IdempotencyKey.key == key
            )
        )
        if row is not None:
            row.status_code = captured["status"]
            row.response_body = captured["body"]
            row.content_type = captured["type"]


def _release(db: Database, workspace_id: str, key: str) -> None:
    with db.session() as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.workspace_id == workspace_id, IdempotencyKey.key == key
            )
        )
