"""The chat gateway: a chat goes from whoever asks (the API, a batch) straight to its
service's model server, and its answer straight back.

On the way it is rendered with the model's own chat template, checked against the
model's context, sent to the server's `/v1/completions` (vLLM's, or the transformers
fallback's), and metered; nothing is written to the database and nothing is queued.
A server that is restarting is waited for, up to the chat's time limit; a caller that
goes away closes the upstream request, and the server stops generating.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tunelab.errors import Conflict, Invalid, NotFound, TunelabError
from tunelab.serving.model_files import prompt_folder
from tunelab.serving.openai import Sampling
from tunelab.serving.prompts import PromptError, PromptKit, context_length, load_prompt_kit
from tunelab.serving.routes import Route, RouteTable
from tunelab.serving.served import Served
from tunelab.serving.slots import ServerSlots
from tunelab.serving.usage import UsageMeter
from tunelab.settings import Settings
from tunelab.store import ObjectStore


class ChatFailed(TunelabError):
    """A chat that was sent but not answered; `code` says why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Answer:
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None

    @property
    def tokens_per_second(self) -> float:
        return round(self.completion_tokens / self.latency_s, 2) if self.latency_s > 0 else 0.0


@dataclass
class _Progress:
    """How far a streamed answer got: pieces seen and when the first came."""

    pieces: int = 0
    first: float | None = None

    def saw(self, text: str) -> None:
        self.pieces += 1
        self.first = self.first or time.monotonic()


@dataclass(frozen=True)
class Upstream:
    """A chat ready to send: its route, the completion request, and its deadline."""

    route: Route
    body: dict[str, Any]
    prompt_tokens: int
    started: float
    deadline: float


class Gateway:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        routes: RouteTable,
        meter: UsageMeter,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings, self.store, self.routes, self.meter = settings, store, routes, meter
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.chat_timeout_s, connect=5),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self._kits: dict[tuple[str, str, str | None, tuple[str, ...]], PromptKit] = {}
        self._kit_locks: dict[tuple[str, str, str | None, tuple[str, ...]], asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    async def resolve(self, workspace_id: str, names: list[str], field: str) -> list[Route]:
        """The routes of the named services, in order; NotFound naming the unknown ones,
        Conflict naming those not ready."""
        found = await self.routes.get(workspace_id, names)
        unknown = [n for n in names if found[n] is None]
        if unknown:
            raise NotFound(
                f"No services named {unknown}.",
                [{"field": field, "message": f"no service {n!r}"} for n in unknown],
            )
        routes = [r for r in (found[n] for n in names) if r is not None]
        waiting = [r for r in routes if r.status != "ready"]
        if waiting:
            raise Conflict(
                f"Services {[r.service for r in waiting]} are not ready.",
                [{"field": field, "message": f"{r.service!r} is {r.status}"} for r in waiting],
            )
        return routes

    async def kit(self, what: Served) -> PromptKit:
        key = (what.prompt_uri, what.server_model_uri, what.chat_template, what.stop_tokens)
        kit = self._kits.get(key)
        if kit is None:
            # One fetch of a model's files, not one per chat waiting for them.
            async with self._kit_locks.setdefault(key, asyncio.Lock()):
                kit = self._kits.get(key)
                if kit is None:
                    kit = await asyncio.to_thread(self._load_kit, what)
                    self._kits[key] = kit
        return kit

    def _load_kit(self, what: Served) -> PromptKit:
        try:
            folder = prompt_folder(self.settings, self.store, what.prompt_uri)
            context = None
            if not (folder / "config.json").exists():  # an adapter: its base has it
                base = prompt_folder(self.settings, self.store, what.server_model_uri)
                config = base / "config.json"
                context = (
                    context_length(json.loads(config.read_text())) if config.exists() else None
                )
            return load_prompt_kit(folder, what.chat_template, what.stop_tokens, context)
        except (PromptError, FileNotFoundError, OSError, ValueError) as exc:
            raise ChatFailed(422, "model_files", f"The model cannot be prompted: {exc}.") from None

    async def prepare(
        self,
        route: Route,
        messages: list[dict[str, str]],
        sampling: Sampling,
        max_tokens_field: str = "max_tokens",
    ) -> Upstream:
        """The chat rendered and checked; Invalid naming `max_tokens` when the answer
        cannot fit in what the model's context leaves."""
        kit = await self.kit(route.served)
        try:
            prompt = kit.render(messages)
        except PromptError as exc:
            raise Invalid(
                f"The chat cannot be rendered: {exc}.", [{"field": "messages", "message": str(exc)}]
            ) from None
        room = kit.context - prompt.tokens
        if room < 1:
            message = f"the chat is {prompt.tokens} tokens; the model's context is {kit.context}"
            raise Invalid(
                f"The chat is too long: {message}.", [{"field": "messages", "message": message}]
            )
        if sampling.max_tokens is not None and sampling.max_tokens > room:
            message = (
                f"{sampling.max_tokens} is more than the {room} tokens the model's context "
                f"({kit.context}) leaves after this chat's {prompt.tokens}"
            )
            raise Invalid(
                f"{max_tokens_field}: {message}.", [{"field": max_tokens_field, "message": message}]
            )
        body: dict[str, Any] = {
            "model": route.target,
            "prompt": prompt.text,
            "max_tokens": sampling.max_tokens or room,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": list(dict.fromkeys([*kit.stops, *sampling.stop])),
            # The template already holds every special token the model was trained with.
            "add_special_tokens": False,
        }
        for name in ("seed", "presence_penalty", "frequency_penalty"):
            if getattr(sampling, name) is not None:
                body[name] = getattr(sampling, name)
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        now = time.monotonic()
        return Upstream(route, body, prompt.tokens, now, now + self.settings.chat_timeout_s)

    async def stream(self, up: Upstream) -> AsyncIterator[str | Answer]:
        """The answer's text as it comes, then the whole Answer."""
        seen = _Progress()
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish: str | None = None
        with self._unfinished(up, seen):
            async with self._open(up, stream=True) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:  # the server gave up mid-answer
                        message = str(chunk["error"].get("message", chunk["error"]))[:500]
                        raise ChatFailed(502, "server_error", f"The model server failed: {message}")
                    for choice in chunk.get("choices") or ():
                        text = choice.get("text")
                        if text:
                            seen.saw(text)
                            parts.append(text)
                            yield text
                        finish = choice.get("finish_reason") or finish
                    usage = chunk.get("usage") or usage
        yield self._answer(up, "".join(parts), finish, usage, seen)

    async def complete(self, up: Upstream, slots: ServerSlots | None = None) -> Answer:
        """The whole answer at once; with `slots`, only while one of the server's slots
        is held (batches share a bounded number of each server's requests)."""
        with self._unfinished(up, _Progress()):
            async with _held(slots, up.route), self._open(up, stream=False) as response:
                reply = json.loads(await response.aread())
        choice = (reply.get("choices") or [{}])[0]
        return self._answer(
            up, choice.get("text") or "", choice.get("finish_reason"), reply.get("usage") or {}
        )

    def _answer(
        self,
        up: Upstream,
        content: str,
        finish: str | None,
        usage: dict[str, Any],
        seen: _Progress | None = None,
    ) -> Answer:
        seen = seen or _Progress()
        answer = Answer(
            content=content,
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens", up.prompt_tokens)),
            completion_tokens=int(usage.get("completion_tokens", seen.pieces)),
            latency_s=time.monotonic() - up.started,
            ttft_s=seen.first - up.started if seen.first is not None else None,
        )
        self._meter(up, "ok", answer.prompt_tokens, answer.completion_tokens, seen)
        return answer

    @contextmanager
    def _unfinished(self, up: Upstream, seen: _Progress) -> Iterator[None]:
        """A chat that ends before its answer is metered as it ended: the server's
        failure (as ChatFailed) an error, the caller leaving (cancelled, closed) a
        cancellation; its completion tokens are about one a piece seen."""
        try:
            yield
        except ChatFailed:
            self._meter(up, "error", up.prompt_tokens, seen.pieces, seen)
            raise
        except (httpx.HTTPError, ValueError) as exc:
            self._meter(up, "error", up.prompt_tokens, seen.pieces, seen)
            raise ChatFailed(502, "server_failed", f"The model server failed: {exc}.") from None
        except BaseException:
            self._meter(up, "cancelled", up.prompt_tokens, seen.pieces, seen)
            raise

    def _meter(
        self, up: Upstream, outcome: str, prompt: int, completion: int, seen: _Progress
    ) -> None:
        route = up.route
        ttft = seen.first - up.started if seen.first is not None else None
        self.meter.record(
            route.workspace_id,
            route.workspace,
            route.service,
            outcome,
            prompt,
            completion,
            time.monotonic() - up.started,
            ttft,
        )

    @asynccontextmanager
    async def _open(self, up: Upstream, stream: bool) -> AsyncIterator[httpx.Response]:
        """The server's answer once it starts; while the server is down or reloading
        the service's adapter (it restarted), wait for it until the chat's deadline."""
        route: Route | None = up.route
        body = {**up.body, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        while True:
            assert route is not None
            if route.ready:
                request = self.http.build_request("POST", f"{route.url}/v1/completions", json=body)
                try:
                    response = await self.http.send(request, stream=True)
                except httpx.TransportError:
                    response = None  # not listening: the server is down or moved
                if response is not None and response.status_code == 200:
                    try:
                        yield response
                    finally:
                        await response.aclose()
                    return
                if response is not None:
                    text = (await response.aread()).decode(errors="replace")[:500]
                    await response.aclose()
                    # 404: the server does not know the adapter (yet): it came back from
                    # a restart and its keeper is loading the adapters again.
                    if response.status_code != 404:
                        status = 400 if response.status_code < 500 else 502
                        raise ChatFailed(
                            status, "server_error", f"The model server refused the chat: {text}"
                        )
            self.routes.forget(route)
            if time.monotonic() > up.deadline:
                raise ChatFailed(
                    504, "timeout", f"Service {up.route.service!r} did not answer in time."
                )
            await self.routes.changed(timeout=0.5)
            route = (await self.routes.get(up.route.workspace_id, [up.route.service]))[
                up.route.service
            ]
            if route is None or route.status != "ready":
                raise ChatFailed(
                    409, "not_ready", f"Service {up.route.service!r} is no longer serving."
                )


@asynccontextmanager
async def _held(slots: ServerSlots | None, route: Route) -> AsyncIterator[None]:
    if slots is None:
        yield
        return
    async with slots.hold(route.url or route.service_id):
        yield
