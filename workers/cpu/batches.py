"""Running a batch: each line of the input file is a chat request in OpenAI's batch
format; good lines go through the same gateway as interactive chats, a few at a time and
at most TUNELAB_BATCH_REQUESTS_PER_SERVER per model server across all workers, so a big
batch cannot starve the people chatting with the same server. Bad lines are reported by
line. Results and errors are written to the object store as JSONL, in input order.

A worker that dies midway leaves the message to be redelivered, and the batch runs
again from its first line: its files are only written once it is complete.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.context import Context
from tunelab.db.tables import Batch
from tunelab.errors import Conflict, NotFound, TunelabError
from tunelab.events.batch import (
    BatchCompleted,
    BatchCounts,
    BatchCreated,
    BatchFailed,
    BatchFailedData,
)
from tunelab.serving.gateway import Gateway
from tunelab.serving.openai import ChatRequest, completion
from tunelab.serving.routes import RouteTable
from tunelab.serving.slots import ServerSlots
from tunelab.serving.usage import UsageMeter
from tunelab.store import keys
from tunelab.workers.context import current
from tunelab.workers.registry import subscriber

IN_FLIGHT = 16
"""Lines of one batch under way at once (each waits for a slot of its server)."""
PROGRESS_EVERY_S = 1.0
FINAL = ("completed", "failed")
LINE_CODES = {NotFound: "model_not_found", Conflict: "model_not_ready"}
"""A line's error code when its service is unknown or not ready."""


class BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: ChatRequest


class Problem(Exception):
    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.custom_id = code, message, custom_id


def parse_lines(raw: bytes) -> list[tuple[int, BatchLine | Problem]]:
    """(line number, BatchLine or Problem) of each non-blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem("not_utf8", f"The file is not UTF-8 (byte {exc.start}).") from None
    seen: set[str] = set()
    parsed: list[tuple[int, BatchLine | Problem]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parsed.append((number, _parse_line(line, seen)))
    if not parsed:
        raise Problem("empty", "The file holds no requests.")
    return parsed


def _parse_line(line: str, seen: set[str]) -> BatchLine | Problem:
    try:
        item = BatchLine.model_validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "line"
        return Problem("invalid_request", f"{field}: {first['msg']}")
    if item.custom_id in seen:
        message = f"custom_id {item.custom_id!r} is used twice"
        return Problem("duplicate_custom_id", message, item.custom_id)
    seen.add(item.custom_id)
    return item


def run(ctx: Context, event: BatchCreated) -> None:
    with ctx.db.session() as session:
        batch = session.get(Batch, event.data.batch_id)
        if batch is None or batch.status in FINAL:
            return
        workspace, input_key = batch.workspace_id, batch.input_key
    try:
        lines = parse_lines(ctx.store.read_bytes(input_key))
    except Problem as problem:
        _fail(ctx, event, {"code": problem.code, "message": problem.message})
        return
    counts = {"total": len(lines), "completed": 0, "failed": 0}
    _update(ctx, event.data.batch_id, status="in_progress", counts=counts)
    outcomes = asyncio.run(_answer_all(ctx, event.data.batch_id, workspace, lines, counts))
    output_key = keys.batch_file(event.data.batch_id, "output")
    error_key = keys.batch_file(event.data.batch_id, "errors")
    results = [outcomes[n] for n, _ in lines if "response" in outcomes[n]]
    errors = [outcomes[n] for n, _ in lines if "response" not in outcomes[n]]
    ctx.store.put_bytes(output_key, _jsonl(results))
    ctx.store.put_bytes(error_key, _jsonl(errors))
    with ctx.db.session() as session:
        batch = session.get(Batch, event.data.batch_id, with_for_update=True)
        if batch is None or batch.status in FINAL:
            return
        batch.status, batch.counts = "completed", counts
        batch.output_key, batch.error_key = output_key, error_key
        batch.completed_at = datetime.now(UTC)
        send = ctx.bus.stage(
            session,
            BatchCompleted.following(
                event, data=BatchCounts(batch_id=event.data.batch_id, **counts)
            ),
        )
    send()


async def _answer_all(
    ctx: Context,
    batch_id: str,
    workspace: str,
    lines: list[tuple[int, BatchLine | Problem]],
    counts: dict[str, int],
) -> dict[int, dict[str, Any]]:
    meter = UsageMeter()
    gateway = Gateway(ctx.settings, ctx.store, RouteTable(ctx.db), meter)
    slots = None
    if ctx.bus.redis is not None:  # a stub broker (tests of the actor alone) has no Redis
        limit, lease = ctx.settings.batch_requests_per_server, ctx.settings.chat_timeout_s + 60
        slots = ServerSlots(ctx.bus.redis, limit, lease)
    outcomes: dict[int, dict[str, Any]] = {}
    saved_at = time.monotonic()
    pending = iter(lines)

    async def answer_next() -> None:
        nonlocal saved_at
        for number, item in pending:
            try:
                outcome = await _answer(gateway, slots, workspace, number, item)
            except Exception as exc:  # one request's fault is its line's error, not the batch's
                custom_id = getattr(item, "custom_id", None)
                outcome = _error_line(number, custom_id, "internal_error", str(exc))
            outcomes[number] = outcome
            counts["completed" if "response" in outcome else "failed"] += 1
            if time.monotonic() - saved_at > PROGRESS_EVERY_S:
                saved_at = time.monotonic()
                await asyncio.to_thread(_update, ctx, batch_id, counts=dict(counts))
                await asyncio.to_thread(meter.flush, ctx.db)

    try:
        await asyncio.gather(*(answer_next() for _ in range(IN_FLIGHT)))
    finally:
        await gateway.aclose()
        await asyncio.to_thread(meter.flush, ctx.db)
    return outcomes


async def _answer(
    gateway: Gateway,
    slots: ServerSlots | None,
    workspace: str,
    number: int,
    item: BatchLine | Problem,
) -> dict[str, Any]:
    if isinstance(item, Problem):
        return _error_line(number, item.custom_id, item.code, item.message)
    request = item.body
    try:
        (route,) = await gateway.resolve(workspace, [request.model], "body.model")
        messages = [m.model_dump() for m in request.messages]
        up = await gateway.prepare(route, messages, request.sampling(), request.max_tokens_field)
        answer = await gateway.complete(up, slots)
    except TunelabError as exc:
        code = LINE_CODES.get(type(exc), exc.code)
        return _error_line(number, item.custom_id, code, exc.message)
    request_id = uuid.uuid4().hex
    body = completion(
        f"chatcmpl-{request_id}",
        int(time.time()),
        route.service,
        answer.content,
        answer.finish_reason,
        answer.prompt_tokens,
        answer.completion_tokens,
    )
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": item.custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": None,
    }


def _error_line(number: int, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "line": number,
        "error": {"code": code, "message": f"line {number}: {message}"},
    }


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _update(ctx: Context, batch_id: str, **fields: Any) -> None:
    with ctx.db.session() as session:
        batch = session.get(Batch, batch_id)
        # A second delivery's progress must not reopen a batch the first one finished.
        if batch is not None and batch.status not in FINAL:
            for name, value in fields.items():
                setattr(batch, name, value)


def _fail(ctx: Context, event: BatchCreated, error: dict[str, str]) -> None:
    with ctx.db.session() as session:
        batch = session.get(Batch, event.data.batch_id, with_for_update=True)
        if batch is None or batch.status in FINAL:
            return
        batch.status, batch.error, batch.completed_at = "failed", error, datetime.now(UTC)
        send = ctx.bus.stage(
            session,
            BatchFailed.following(
                event, data=BatchFailedData(batch_id=event.data.batch_id, error=error)
            ),
        )
    send()


def _give_up(event: BatchCreated, error: str) -> None:
    _fail(current(), event, {"code": "batch_failed", "message": error})


@subscriber("batch.created", "cpu", on_give_up=_give_up, max_retries=3, time_limit=24 * 3_600_000)
def run_batch(event: BatchCreated) -> None:
    run(current(), event)
