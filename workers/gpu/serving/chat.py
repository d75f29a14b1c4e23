"""Answering a chat through the service's model server, piece by piece.

The answer goes to a Redis stream named by the request, which the HTTP function that
asked reads (and streams on); the outcome is published as `chat.answered`. A server
that is restarting is waited for, so a chat sent while it comes back still succeeds.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from tunelab.chat_protocol import STREAM_TTL_S, stream_key
from tunelab.db.models import Model, ModelServer, Service
from tunelab.events.service import ChatAnswered, ChatAnsweredData, ChatRequested, ChatUsage
from tunelab.workers.context import WorkerContext
from tunelab.workers.gpu.serving.keeper import adapter_name, poke
from tunelab.workers.gpu.serving.models import local_dir, render, served
from tunelab.workers.gpu.serving.process import SERVED_NAME


class ChatError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Relay:
    """Writes an answer's pieces to the request's Redis stream."""

    def __init__(self, client: Any, request_id: str) -> None:
        self.client, self.key = client, stream_key(request_id)
        self.sent = 0

    def put(self, kind: str, **fields: Any) -> None:
        pipe = self.client.pipeline()
        pipe.xadd(self.key, {"kind": kind, "body": json.dumps(fields)})
        pipe.expire(self.key, STREAM_TTL_S)
        pipe.execute()
        self.sent += kind == "delta"


def answer(ctx: WorkerContext, event: ChatRequested, relay: Relay) -> None:
    data = event.data
    deadline = time.monotonic() + ctx.settings.chat_timeout_s
    with ctx.db.session() as session:
        service = session.get(Service, data.service_id)
        if service is None:
            raise ChatError("not_found", f"Service {data.service!r} was deleted.")
        model = session.get(Model, service.spec["model_id"])
        if model is None:
            raise ChatError("not_found", f"The model of service {data.service!r} was deleted.")
    what = served(model)
    base_dir = local_dir(ctx, what.server_model_uri)
    messages = [dict(m) for m in data.messages]
    prompt, eos = render(base_dir, what.chat_template, messages)
    stops = list(dict.fromkeys([*what.stop_tokens, *eos, *data.settings.stop]))
    target = adapter_name(service.id) if what.adapter_uri else SERVED_NAME
    body = {
        "model": target,
        "prompt": prompt,
        "max_tokens": data.settings.max_tokens,
        "temperature": data.settings.temperature,
        "top_p": data.settings.top_p,
        "stop": stops,
        "stream": True,
        "stream_options": {"include_usage": True},
        # The template already holds every special token the model was trained with.
        "add_special_tokens": False,
    }
    while True:
        url = _ready_url(ctx, data.service_id, data.service)
        if url is not None:
            try:
                _complete(ctx, event, url, body, relay)
                return
            except (httpx.TransportError, _NotLoaded) as exc:
                if relay.sent:
                    raise ChatError("server_failed", f"The model server failed: {exc}.") from None
                poke()  # a keeper in this process looks at its server now
        if time.monotonic() > deadline:
            raise ChatError(
                "timeout", f"Service {data.service!r} did not answer within the time limit."
            )
        time.sleep(0.25)


class _NotLoaded(Exception):
    """The server does not know the adapter: it restarted and is loading it again."""


def _ready_url(ctx: WorkerContext, service_id: str, name: str) -> str | None:
    with ctx.db.session() as session:
        service = session.get(Service, service_id)
        if service is None or service.status == "failed":
            raise ChatError("not_ready", f"Service {name!r} is no longer serving.")
        server = session.get(ModelServer, service.server_id) if service.server_id else None
        if service.status != "ready" or server is None or server.status != "ready":
            return None
        return server.url


def _complete(
    ctx: WorkerContext, event: ChatRequested, url: str, body: dict[str, Any], relay: Relay
) -> None:
    started = time.monotonic()
    usage: dict[str, int] = {}
    finish: str | None = None
    parts: list[str] = []
    timeout = httpx.Timeout(ctx.settings.chat_timeout_s, connect=5)
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=timeout) as reply:
        if reply.status_code == 404:
            raise _NotLoaded(reply.read().decode(errors="replace")[:300])
        if reply.status_code != 200:
            text = reply.read().decode(errors="replace")[:500]
            raise ChatError("server_error", f"The model server refused the chat: {text}")
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    parts.append(choice["text"])
                    relay.put("delta", text=choice["text"])
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage
    elapsed = time.monotonic() - started
    completion = int(usage.get("completion_tokens", 0))
    latency_ms = (datetime.now(UTC) - event.time).total_seconds() * 1000
    result = ChatAnsweredData(
        request_id=event.data.request_id,
        service=event.data.service,
        usage=ChatUsage(
            prompt_tokens=int(usage.get("prompt_tokens", 0)), completion_tokens=completion
        ),
        latency_ms=round(latency_ms, 1),
        tokens_per_second=round(completion / elapsed, 2) if elapsed > 0 else 0.0,
        finish_reason=finish,
    )
    relay.put("done", content="".join(parts), **result.model_dump(mode="json"))
    ctx.bus.publish(ChatAnswered.following(event, data=result))
