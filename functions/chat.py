"""Chatting with deployed services: side-by-side comparison, and the OpenAI-compatible
`/v1/chat/completions` and `/v1/models`.

Each chat is a `chat.requested` event that a GPU worker answers through the service's
server, writing the answer piece by piece to a Redis stream named by the request; this
function reads that stream and answers in JSON or as server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from tunelab.chat_protocol import (
    Message,
    OpenAIRequest,
    completion_body,
    decode,
    stream_key,
    usage_of,
)
from tunelab.db.models import Service
from tunelab.errors import Conflict, NotFound, TunelabError, Unavailable
from tunelab.events.service import ChatRequested, ChatRequestedData, ChatSettings
from tunelab.functions.http import parse, read_json, respond, workspace_id


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    services: list[str] = Field(min_length=1, max_length=3)
    messages: list[Message] = Field(min_length=1)
    system: str | None = None
    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=128, ge=1, le=8192)
    stream: bool = False


ERROR_STATUS = {"not_found": 404, "not_ready": 409, "server_error": 400, "timeout": 504}
"""HTTP status of a chat that failed, by the error code its GPU worker gave."""


def ready_services(request: Request, names: list[str], field: str) -> list[Service]:
    """The workspace's services of those names, in order; 404 naming the unknown ones,
    409 naming those not ready."""
    workspace = workspace_id(request)
    with request.app.state.db.session() as session:
        rows = {
            s.name: s
            for s in session.scalars(
                select(Service).where(Service.workspace_id == workspace, Service.name.in_(names))
            )
        }
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise NotFound(
            f"No services named {unknown}.",
            [{"field": field, "message": f"no service {n!r}"} for n in unknown],
        )
    waiting = [n for n in names if rows[n].status != "ready"]
    if waiting:
        raise Conflict(
            f"Services {waiting} are not ready.",
            [{"field": field, "message": f"{n!r} is {rows[n].status}"} for n in waiting],
        )
    return [rows[n] for n in names]


def ask(
    request: Request, service: Service, messages: list[dict[str, str]], settings: ChatSettings
) -> str:
    """Publish one chat; the request id whose stream carries the answer."""
    request_id = uuid.uuid4().hex
    request.app.state.bus.publish(
        ChatRequested(
            workspace=service.workspace_id,
            subject=f"services/{service.name}",
            data=ChatRequestedData(
                request_id=request_id,
                service_id=service.id,
                service=service.name,
                messages=messages,
                settings=settings,
            ),
        )
    )
    return request_id


async def pieces(request: Request, request_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(kind, body) of each piece of the answer until `done` or `error`."""
    redis = request.app.state.redis
    if redis is None:
        raise Unavailable("Chat needs the broker's Redis; set TUNELAB_REDIS_URL.")
    key, last = stream_key(request_id), "0"
    deadline = time.monotonic() + request.app.state.settings.chat_timeout_s + 30
    while time.monotonic() < deadline:
        reply = await redis.xread({key: last}, block=2000, count=100)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                kind, body = decode(fields)
                yield kind, body
                if kind in ("done", "error"):
                    await redis.delete(key)
                    return
    yield "error", {"code": "timeout", "message": "No answer came in time."}


def _messages(system: str | None, messages: list[Message]) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [m.model_dump() for m in messages]


async def compare(request: Request) -> Any:
    spec = parse(CompareRequest, await read_json(request), "chat")
    services = await run_in_threadpool(ready_services, request, spec.services, "services")
    settings = ChatSettings(
        temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens
    )
    messages = _messages(spec.system, spec.messages)
    ids = [await run_in_threadpool(ask, request, s, messages, settings) for s in services]
    if spec.stream:
        return StreamingResponse(
            _compare_events(request, services, ids), media_type="text/event-stream"
        )
    results = await asyncio.gather(
        *(_result(request, s, i) for s, i in zip(services, ids, strict=True))
    )
    return respond({"results": results})


async def _result(request: Request, service: Service, request_id: str) -> dict[str, Any]:
    async for kind, body in pieces(request, request_id):
        if kind == "done":
            return {
                "service": service.name,
                "content": body["content"],
                "usage": body["usage"],
                "latency_ms": body["latency_ms"],
                "tokens_per_second": body["tokens_per_second"],
                "finish_reason": body.get("finish_reason"),
            }
        if kind == "error":
            return {"service": service.name, "error": body}
    raise AssertionError("unreachable: pieces always ends with done or error")


async def _compare_events(
    request: Request, services: list[Service], ids: list[str]
) -> AsyncIterator[str]:
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def relay(service: Service, request_id: str) -> None:
        try:
            async for kind, body in pieces(request, request_id):
                body = {"service": service.name, **body}
                await queue.put(f"event: {kind}\ndata: {json.dumps(body)}\n\n")
        except Exception as exc:  # the client must see this service's stream end badly
            body = {"service": service.name, "code": "internal_error", "message": str(exc)}
            await queue.put(f"event: error\ndata: {json.dumps(body)}\n\n")
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(relay(s, i)) for s, i in zip(services, ids, strict=True)]
    open_streams = len(tasks)
    while open_streams:
        item = await queue.get()
        if item is None:
            open_streams -= 1
            continue
        yield item
    yield "event: end\ndata: {}\n\n"


def _openai_error(exc: TunelabError) -> JSONResponse:
    kind = {404: "not_found_error", 409: "invalid_request_error"}.get(exc.status, "api_error")
    body = {"error": {"message": exc.message, "type": kind, "code": exc.code, "param": None}}
    return JSONResponse(body, status_code=exc.status)


async def chat_completions(request: Request) -> Any:
    spec = parse(OpenAIRequest, await read_json(request), "chat completion")
    try:
        (service,) = await run_in_threadpool(ready_services, request, [spec.model], "model")
    except TunelabError as exc:
        return _openai_error(exc)
    settings = spec.chat_settings()
    request_id = await run_in_threadpool(
        ask, request, service, _messages(None, spec.messages), settings
    )
    chat_id, created = f"chatcmpl-{request_id}", int(time.time())
    if spec.stream:
        usage = bool((spec.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            _openai_chunks(request, request_id, chat_id, created, spec.model, usage),
            media_type="text/event-stream",
        )
    async for kind, body in pieces(request, request_id):
        if kind == "error":
            # 4xx for what asking again cannot change: the openai client retries 5xx.
            status = ERROR_STATUS.get(body["code"], 502)
            kind_name = "invalid_request_error" if status < 500 else "api_error"
            return JSONResponse(
                {"error": {"message": body["message"], "type": kind_name, "code": body["code"]}},
                status_code=status,
            )
        if kind == "done":
            return respond(completion_body(chat_id, created, spec.model, body))
    raise AssertionError("unreachable: pieces always ends with done or error")


async def _openai_chunks(
    request: Request, request_id: str, chat_id: str, created: int, model: str, usage: bool
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        body = {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    async for kind, body in pieces(request, request_id):
        if kind == "delta":
            yield chunk({"content": body["text"]}, None)
        elif kind == "done":
            yield chunk({}, body.get("finish_reason") or "stop")
            if usage:
                yield (
                    "data: "
                    + json.dumps(
                        {
                            "id": chat_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage_of(body),
                        }
                    )
                    + "\n\n"
                )
        else:
            yield f"data: {json.dumps({'error': body})}\n\n"
    yield "data: [DONE]\n\n"


def list_openai_models(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(Service)
            .where(Service.workspace_id == workspace_id(request), Service.status == "ready")
            .order_by(Service.created_at.desc())
        ).all()
        data = [
            {
                "id": s.name,
                "object": "model",
                "created": int(s.created_at.timestamp()),
                "owned_by": request.scope["workspace"].name,
            }
            for s in rows
        ]
    return respond({"object": "list", "data": data})
