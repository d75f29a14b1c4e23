"""Answers that must stop when their client goes away: a chat's generation costs a model
server's time for every token, so whatever produces the answer is cancelled the moment
the client disconnects, whether the answer is streamed or not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

CLIENT_CLOSED = 499
"""What is logged for a request whose client left first (nginx's code); nobody reads it."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """The result of `work`, or an empty 499 once the client has gone (`work` is
    cancelled then)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        watch.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):  # the client left: what the work raised is moot
        await task
    return Response(status_code=CLIENT_CLOSED)


class EventStream(Response):
    """A server-sent-events response over `events`, cancelled when the client leaves
    (Starlette's StreamingResponse only notices at its next write, and leaves its
    iterator for the garbage collector to close)."""

    def __init__(self, events: AsyncIterator[str]) -> None:  # no body: not Response's
        self.events = events
        self.status_code, self.background = 200, None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies must not hold pieces back
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def pump() -> None:
            async for chunk in self.events:
                await send(
                    {"type": "http.response.body", "body": chunk.encode(), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        streaming = asyncio.ensure_future(pump())
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({streaming, watch}, return_when=asyncio.FIRST_COMPLETED)
            if streaming in done:
                watch.cancel()
                with contextlib.suppress(OSError):  # the client left as the last piece went
                    streaming.result()
                return
            streaming.cancel()  # the generator's cleanup closes its upstream request
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await streaming
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]
