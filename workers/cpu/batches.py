"""Running a batch: each line of the input file is a chat request in OpenAI's batch
format; good lines are asked of their services a few at a time, bad ones are reported
by line. Results and errors are written to the object store as JSONL, in input order.

A worker that dies midway leaves the message to be redelivered, and the batch runs
again from its first line: its files are only written once it is complete.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal

import dramatiq
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from tunelab.chat_protocol import OpenAIRequest, completion_body, read_answer
from tunelab.db.models import Batch, Service
from tunelab.events.batch import (
    BatchCompleted,
    BatchCounts,
    BatchCreated,
    BatchFailed,
    BatchFailedData,
)
from tunelab.events.service import ChatRequested, ChatRequestedData
from tunelab.store import keys
from tunelab.workers.context import WorkerContext, current
from tunelab.workers.registry import subscriber

IN_FLIGHT = 8
"""Requests of one batch asked at once: enough to keep a server's batches full."""
PROGRESS_EVERY_S = 1.0
FINAL = ("completed", "failed")


class BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: OpenAIRequest


class Problem(Exception):
    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.custom_id = code, message, custom_id


def parse_lines(raw: bytes, services: dict[str, Service]) -> list[tuple[int, Any]]:
    """(line number, BatchLine or Problem) of each non-blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem("not_utf8", f"The file is not UTF-8 (byte {exc.start}).") from None
    seen: set[str] = set()
    parsed: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parsed.append((number, _parse_line(line, services, seen)))
    if not parsed:
        raise Problem("empty", "The file holds no requests.")
    return parsed


def _parse_line(line: str, services: dict[str, Service], seen: set[str]) -> BatchLine | Problem:
    try:
        item = BatchLine.model_validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "line"
        return Problem("invalid_request", f"{field}: {first['msg']}")
    if item.custom_id in seen:
        message = f"custom_id {item.custom_id!r} is used twice"
        return Problem("duplicate_custom_id", message, item.custom_id)
    problem = _service_problem(item, services)
    if problem is not None:
        return problem
    seen.add(item.custom_id)
    return item


def _service_problem(item: BatchLine, services: dict[str, Service]) -> Problem | None:
    service = services.get(item.body.model)
    if service is None:
        return Problem("model_not_found", f"no service {item.body.model!r}", item.custom_id)
    if service.status != "ready":
        message = f"service {item.body.model!r} is {service.status}"
        return Problem("model_not_ready", message, item.custom_id)
    return None


def run(ctx: WorkerContext, event: BatchCreated, redis: Any) -> None:
    with ctx.db.session() as session:
        batch = session.get(Batch, event.data.batch_id)
        if batch is None or batch.status in FINAL:
            return
        workspace, input_key = batch.workspace_id, batch.input_key
        services = {
            s.name: s
            for s in session.scalars(select(Service).where(Service.workspace_id == workspace))
        }
        for service in services.values():
            session.expunge(service)
    try:
        lines = parse_lines(ctx.store.read_bytes(input_key), services)
    except Problem as problem:
        _fail(ctx, event, {"code": problem.code, "message": problem.message})
        return
    counts = {"total": len(lines), "completed": 0, "failed": 0}
    _update(ctx, event.data.batch_id, status="in_progress", counts=counts)
    outcomes: dict[int, dict[str, Any]] = {}
    lock, last_saved = threading.Lock(), [time.monotonic()]

    def answer(number: int, item: BatchLine | Problem) -> None:
        try:
            outcome = _answer(ctx, redis, workspace, services, number, item)
        except Exception as exc:  # one request's fault is its line's error, not the batch's
            custom_id = getattr(item, "custom_id", None)
            outcome = _error_line(number, custom_id, "internal_error", str(exc))
        with lock:
            outcomes[number] = outcome
            counts["completed" if "response" in outcome else "failed"] += 1
            if time.monotonic() - last_saved[0] > PROGRESS_EVERY_S:
                last_saved[0] = time.monotonic()
                _update(ctx, event.data.batch_id, counts=dict(counts))

    with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="batch") as pool:
        for future in [pool.submit(answer, n, item) for n, item in lines]:
            future.result()
    prefix = keys.batch_prefix(event.data.batch_id)
    results = [outcomes[n] for n, _ in lines if "response" in outcomes[n]]
    errors = [outcomes[n] for n, _ in lines if "response" not in outcomes[n]]
    ctx.store.put_bytes(f"{prefix}output.jsonl", _jsonl(results))
    ctx.store.put_bytes(f"{prefix}errors.jsonl", _jsonl(errors))
    with ctx.db.session() as session:
        batch = session.get(Batch, event.data.batch_id, with_for_update=True)
        if batch is None or batch.status in FINAL:
            return
        batch.status, batch.counts = "completed", counts
        batch.output_key, batch.error_key = f"{prefix}output.jsonl", f"{prefix}errors.jsonl"
        batch.completed_at = datetime.now(UTC)
        send = ctx.bus.stage(
            session,
            BatchCompleted.following(
                event, data=BatchCounts(batch_id=event.data.batch_id, **counts)
            ),
        )
    send()


def _answer(
    ctx: WorkerContext,
    redis: Any,
    workspace: str,
    services: dict[str, Service],
    number: int,
    item: BatchLine | Problem,
) -> dict[str, Any]:
    if isinstance(item, Problem):
        return _error_line(number, item.custom_id, item.code, item.message)
    request_id = uuid.uuid4().hex
    service = services[item.body.model]
    messages = [m.model_dump() for m in item.body.messages]
    ctx.bus.publish(
        ChatRequested(
            workspace=workspace,
            subject=f"services/{service.name}",
            data=ChatRequestedData(
                request_id=request_id,
                service_id=service.id,
                service=service.name,
                messages=messages,
                settings=item.body.chat_settings(),
            ),
        )
    )
    for kind, body in read_answer(redis, request_id, ctx.settings.chat_timeout_s + 30):
        if kind == "done":
            completion = completion_body(
                f"chatcmpl-{request_id}", int(time.time()), service.name, body
            )
            return {
                "id": f"batch_req_{request_id}",
                "custom_id": item.custom_id,
                "response": {"status_code": 200, "request_id": request_id, "body": completion},
                "error": None,
            }
        if kind == "error":
            return _error_line(number, item.custom_id, body["code"], body["message"])
    raise AssertionError("unreachable: read_answer ends with done or error")


def _error_line(number: int, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "line": number,
        "error": {"code": code, "message": f"line {number}: {message}"},
    }


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _update(ctx: WorkerContext, batch_id: str, **fields: Any) -> None:
    with ctx.db.session() as session:
        batch = session.get(Batch, batch_id)
        # A second delivery's progress must not reopen a batch the first one finished.
        if batch is not None and batch.status not in FINAL:
            for name, value in fields.items():
                setattr(batch, name, value)


def _fail(ctx: WorkerContext, event: BatchCreated, error: dict[str, str]) -> None:
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
    run(current(), event, getattr(dramatiq.get_broker(), "client", None))
