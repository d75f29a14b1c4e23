"""Chatting with deployed services: side-by-side comparison, and the OpenAI-compatible
`/v1/chat/completions` and `/v1/models`.

These are the data plane: each chat goes through the gateway straight to its service's
model server, with no event, no queue and no database write on its way. Usage is
metered in memory; the chat itself is kept only when the request (or the service)
says `store`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from tunelab.api_requests import CompareRequest
from tunelab.db.tables import FineTuningJob, Service
from tunelab.errors import TunelabError
from tunelab.functions import fine_tuning
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.serving.gateway import Answer, ChatFailed, Gateway, Upstream
from tunelab.serving.openai import ChatRequest, Message, Sampling, completion
from tunelab.serving.routes import Route
from tunelab.streams import EventStream, until_disconnected
from tunelab.times import epoch


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _keep(
    request: Request,
    route: Route,
    store: bool | None,
    messages: list[dict[str, str]],
    body: dict[str, Any],
    metadata: dict[str, str] | None = None,
) -> bool:
    """Keep the chat when the request (or else its service) says so; whether it was."""
    kept = store if store is not None else route.store
    if kept:
        request.app.state.archive.keep(
            chat_id=body["id"],
            workspace_id=route.workspace_id,
            service=route.service,
            messages=messages,
            completion={**body, "metadata": metadata or {}},
            metadata=metadata,
        )
    return kept


def _completion(chat_id: str, created: int, model: str, answer: Answer) -> dict[str, Any]:
    return completion(
        chat_id,
        created,
        model,
        answer.content,
        answer.finish_reason,
        answer.prompt_tokens,
        answer.completion_tokens,
    )


def _messages(system: str | None, messages: list[Message]) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [m.model_dump() for m in messages]


def _result(route: Route, answer: Answer) -> dict[str, Any]:
    return {
        "service": route.service,
        "content": answer.content,
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        },
        "latency_ms": round(answer.latency_s * 1000, 1),
        "tokens_per_second": answer.tokens_per_second,
        "finish_reason": answer.finish_reason,
    }


def _failure(route: Route, exc: TunelabError) -> dict[str, Any]:
    return {"service": route.service, "error": {"code": exc.code, "message": exc.message}}


async def compare(request: Request) -> Any:
    spec = parse(CompareRequest, await read_json(request), "chat")
    gateway = _gateway(request)
    routes = await gateway.resolve(workspace_id(request), spec.services, "services")
    sampling = Sampling(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens)
    messages = _messages(spec.system, spec.messages)
    ups = [await gateway.prepare(r, messages, sampling) for r in routes]
    created = int(time.time())
    # Stored answers of one comparison share its id: a vote for the best of them
    # (POST /api/v1/chat/feedback) makes them a preference.
    comparison = spec.comparison_id or f"cmp-{uuid.uuid4().hex}"

    def keep(up: Upstream, answer: Answer) -> dict[str, Any]:
        body = _completion(f"chatcmpl-{uuid.uuid4().hex}", created, up.route.service, answer)
        stored = _keep(request, up.route, spec.store, messages, body, {"comparison": comparison})
        result = _result(up.route, answer)
        return {**result, "comparison_id": comparison, "chat_id": body["id"] if stored else None}

    if spec.stream:
        return EventStream(_compare_events(gateway, ups, keep))

    async def one(up: Upstream) -> dict[str, Any]:
        try:
            return keep(up, await gateway.complete(up))
        except TunelabError as exc:
            return _failure(up.route, exc)

    results = await until_disconnected(request, asyncio.gather(*(one(up) for up in ups)))
    if isinstance(results, Response):
        return results
    return respond({"comparison_id": comparison, "results": results})


def _sse(kind: str, body: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _compare_events(gateway: Gateway, ups: list[Upstream], keep: Any) -> AsyncIterator[str]:
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def relay(up: Upstream) -> None:
        name = up.route.service
        try:
            async for piece in gateway.stream(up):
                if isinstance(piece, str):
                    await queue.put(_sse("delta", {"service": name, "text": piece}))
                else:
                    await queue.put(_sse("done", keep(up, piece)))
        except TunelabError as exc:
            await queue.put(
                _sse("error", {"service": name, "code": exc.code, "message": exc.message})
            )
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(relay(up)) for up in ups]
    try:
        open_streams = len(tasks)
        while open_streams:
            item = await queue.get()
            if item is None:
                open_streams -= 1
                continue
            yield item
        yield "event: end\ndata: {}\n\n"
    finally:
        for task in tasks:  # the client left: every service's generation stops
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def chat_completions(request: Request) -> Any:
    spec = parse(ChatRequest, await read_json(request), "chat completion")
    gateway = _gateway(request)
    (route,) = await gateway.resolve(workspace_id(request), [spec.model], "model")
    messages = [m.model_dump() for m in spec.messages]
    up = await gateway.prepare(route, messages, spec.sampling(), spec.max_tokens_field)
    chat_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if spec.stream:
        usage = bool((spec.stream_options or {}).get("include_usage"))
        return EventStream(_openai_chunks(request, spec, up, messages, chat_id, created, usage))
    answer = await until_disconnected(request, gateway.complete(up))
    if isinstance(answer, Response):
        return answer
    # The model as asked: a job's `ft:` name stays that, not the service it went to.
    body = _completion(chat_id, created, spec.model, answer)
    _keep(request, route, spec.store, messages, body, spec.metadata)
    return respond(body)


async def _openai_chunks(
    request: Request,
    spec: ChatRequest,
    up: Upstream,
    messages: list[dict[str, str]],
    chat_id: str,
    created: int,
    usage: bool,
) -> AsyncIterator[str]:
    head = {"id": chat_id, "object": "chat.completion.chunk", "created": created}
    head["model"] = spec.model

    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**head, 'choices': [choice]}, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    try:
        async for piece in _gateway(request).stream(up):
            if isinstance(piece, str):
                yield chunk({"content": piece}, None)
                continue
            yield chunk({}, piece.finish_reason or "stop")
            body = _completion(chat_id, created, spec.model, piece)
            if usage:
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': body['usage']})}\n\n"
            _keep(request, up.route, spec.store, messages, body, spec.metadata)
    except ChatFailed as exc:
        error = {"message": exc.message, "type": "api_error", "param": None, "code": exc.code}
        yield f"data: {json.dumps({'error': error})}\n\n"
    yield "data: [DONE]\n\n"


def list_openai_models(request: Request) -> Response:
    """The ready services, and the `ft:` name of each job's model one of them serves."""
    workspace = workspace_id(request)
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(Service)
            .where(Service.workspace_id == workspace, Service.status == "ready")
            .order_by(Service.created_at.desc())
        ).all()
        owner = request.scope["workspace"].name
        data = [
            {
                "id": s.name,
                "object": "model",
                "created": epoch(s.created_at),
                "owned_by": owner,
            }
            for s in rows
        ]
        served = {s.model for s in rows}
        jobs = session.scalars(select(FineTuningJob).where(FineTuningJob.workspace_id == workspace))
        for job in jobs:
            model = fine_tuning.fine_tuned_model(session, job)
            if model is not None and fine_tuning.repository_model(session, job) in served:
                data.append(
                    {
                        "id": model,
                        "object": "model",
                        "created": epoch(job.created_at),
                        "owned_by": owner,
                    }
                )
    return respond({"object": "list", "data": data})
