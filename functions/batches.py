"""Batches: a JSONL file of chat requests in OpenAI's batch format, answered by the
workers; results and errors are JSONL files in the object store once `completed`."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tunelab.db.tables import Batch
from tunelab.errors import BadRequest, Conflict, Invalid, NotFound, TooLarge
from tunelab.events.batch import BatchCreated, BatchRef
from tunelab.functions import uploads
from tunelab.functions.boundary import parse_json
from tunelab.functions.http import respond, workspace_id
from tunelab.store import keys
from tunelab.times import iso

MAX_BATCH_BYTES = 50 << 20


def to_json(batch: Batch, store: Any) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "status": batch.status,
        "request_counts": batch.counts or {"total": 0, "completed": 0, "failed": 0},
        "error": batch.error,
        "metadata": batch.metadata_,
        "output_uri": store.uri(batch.output_key) if batch.output_key else None,
        "error_uri": store.uri(batch.error_key) if batch.error_key else None,
        "created_at": iso(batch.created_at),
        "completed_at": iso(batch.completed_at) if batch.completed_at else None,
    }


async def create_batch(request: Request) -> JSONResponse:
    """The file as the multipart part `file` (with an optional `metadata` JSON part), or
    as the whole body (`application/jsonl`)."""
    state, batch_id = request.app.state, f"batch_{secrets.token_hex(12)}"
    input_key = keys.batch_file(batch_id, "input")
    content_type = request.headers.get("content-type", "")
    metadata: Any = {}
    if content_type.startswith("multipart/form-data"):
        received = await uploads.receive(request, state.store, {"file": input_key}, MAX_BATCH_BYTES)
        if "file" not in received.files:
            raise Invalid(
                "The upload has no 'file' part (the JSONL requests).",
                [{"field": "file", "message": "required"}],
            )
        try:
            metadata = parse_json(received.fields.get("metadata") or "{}", "'metadata' part")
        except BadRequest:
            await run_in_threadpool(state.store.delete, input_key)
            raise
    elif content_type.startswith(("application/jsonl", "application/x-ndjson")):
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BATCH_BYTES:
                raise TooLarge(f"A batch file may hold at most {MAX_BATCH_BYTES >> 20} MB.")
        await run_in_threadpool(state.store.put_bytes, input_key, bytes(data))
    else:
        raise BadRequest(
            "Send the requests as multipart/form-data with a 'file' part, or as an "
            f"application/jsonl body, not {content_type or 'nothing'}."
        )
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        await run_in_threadpool(state.store.delete, input_key)
        raise Invalid(
            "The batch metadata must be an object of strings.",
            [{"field": "metadata", "message": "an object of strings"}],
        )
    try:
        body = await run_in_threadpool(_register, request, batch_id, input_key, metadata)
    except BaseException:
        await run_in_threadpool(state.store.delete, input_key)  # nothing half-stored
        raise
    return respond(body, 202)


def _register(
    request: Request, batch_id: str, input_key: str, metadata: dict[str, str]
) -> dict[str, Any]:
    state, workspace = request.app.state, workspace_id(request)
    with state.db.session() as session:
        batch = Batch(
            id=batch_id,
            workspace_id=workspace,
            status="validating",
            input_key=input_key,
            counts={"total": 0, "completed": 0, "failed": 0},
            metadata_=metadata,
        )
        session.add(batch)
        session.flush()
        send = state.bus.stage(
            session,
            BatchCreated(
                workspace=workspace,
                subject=f"batches/{batch_id}",
                data=BatchRef(batch_id=batch_id),
            ),
        )
        body = to_json(batch, state.store)
    send()
    return body


def find(session: Session, workspace: str, batch_id: str) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None or batch.workspace_id != workspace:
        raise NotFound(f"No batch {batch_id!r}.")
    return batch


def list_batches(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(Batch)
            .where(Batch.workspace_id == workspace_id(request))
            .order_by(Batch.created_at.desc())
        )
        return respond({"items": [to_json(b, request.app.state.store) for b in rows]})


def get_batch(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        batch = find(session, workspace_id(request), request.path_params["id"])
        return respond(to_json(batch, request.app.state.store))


def batch_file(request: Request) -> Response:
    """`.../output` or `.../errors`: the JSONL file, once the batch is completed."""
    which = request.path_params["file"]
    with request.app.state.db.session() as session:
        batch = find(session, workspace_id(request), request.path_params["id"])
        key = {"output": batch.output_key, "errors": batch.error_key}.get(which)
        if which not in ("output", "errors"):
            raise NotFound(f"A batch has 'output' and 'errors' files, not {which!r}.")
        if key is None:
            raise Conflict(f"Batch {batch.id} is {batch.status}; its files come when completed.")
    return Response(request.app.state.store.read_bytes(key), media_type="application/jsonl")
