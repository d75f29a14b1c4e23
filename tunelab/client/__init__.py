"""tunelab's Python SDK: the whole native API, sync (`Client`) and async
(`AsyncClient`), on httpx.

    from tunelab.client import Client

    with Client("http://127.0.0.1:8000", token) as tl:
        tl.datasets.upload("faq", "faq.csv")
        for event in tl.watch("exp"):
            print(event["type"], event["data"])

Requests are validated with the server's own models before they are sent; refusals
raise ApiError with the server's code, message and per-field details.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any, Self, TypeVar

import httpx

from tunelab.client.api import Api
from tunelab.client.calls import ApiError, Call, ServerEvent, raise_for, server_events
from tunelab.views import ExperimentView

__all__ = ["ApiError", "AsyncClient", "Client", "ServerEvent"]

T = TypeVar("T")
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
ENDS = ("experiment.succeeded", "experiment.failed", "experiment.cancelled")
RECONNECT_S = 1.0


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _subject_of(experiment: str, envelope: dict[str, Any]) -> bool:
    subject = envelope.get("subject") or ""
    return subject == f"experiments/{experiment}" or subject.startswith(
        f"experiments/{experiment}/"
    )


class Client(Api):
    """The API over one pooled HTTP connection; close it (or use `with`)."""

    def __init__(
        self, url: str, token: str | None = None, http: httpx.Client | None = None
    ) -> None:
        self.http = http or httpx.Client(
            base_url=url.rstrip("/"), headers=_headers(token), timeout=TIMEOUT
        )
        super().__init__(self.send)

    def send(self, call: Call[T]) -> T:
        response = self.http.send(call.request(self.http), stream=call.stream)
        try:
            if call.stream and not response.is_success:
                response.read()
            raise_for(response)
            return call.read(response)
        finally:
            response.close()

    def stream_events(self, after: str | None = None) -> Iterator[ServerEvent]:
        """The workspace's lifecycle events as they happen (after the event `after`,
        else from now), as server-sent events whose data is the event's envelope."""
        params = {"after": after} if after else {}
        timeout = httpx.Timeout(60.0, read=None)
        with self.http.stream(
            "GET", "/api/v1/events/stream", params=params, timeout=timeout
        ) as response:
            if not response.is_success:
                response.read()
                raise_for(response)
            yield from server_events(response.iter_lines())

    def watch(self, experiment: str) -> Iterator[dict[str, Any]]:
        """The experiment's events (task progress, task and experiment ends) as they
        happen, ending with the event that ends it; nothing if it has already ended."""
        latest = self.events(limit=1)
        last = latest[0]["id"] if latest else None
        if self.experiments.get(experiment).ended:
            return
        while True:
            try:
                for event in self.stream_events(last):
                    last = event.id or last
                    envelope = event.json()
                    if not _subject_of(experiment, envelope):
                        continue
                    yield envelope
                    if envelope["type"] in ENDS:
                        return
            except httpx.TransportError:
                pass  # the stream broke (a restarted API, a proxy's timeout)
            # Taken up again after the last event seen, unless the end came meanwhile
            # (then its event is in the stream too, and read next time round).
            if self.experiments.get(experiment).ended and last is None:
                return
            time.sleep(RECONNECT_S)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class AsyncClient(Api):
    """The same API for asyncio: every method answers an awaitable of what Client's
    answers."""

    def __init__(
        self, url: str, token: str | None = None, http: httpx.AsyncClient | None = None
    ) -> None:
        self.http = http or httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=_headers(token), timeout=TIMEOUT
        )
        super().__init__(self.send)

    async def send(self, call: Call[T]) -> T:
        if isinstance(call.content, Iterator):  # an upload's chunks, read as they go
            call = replace(call, content=_async_chunks(call.content))
        response = await self.http.send(call.request(self.http), stream=call.stream)
        try:
            if call.stream and not response.is_success:
                await response.aread()
            raise_for(response)
            if call.stream:
                await response.aread()  # async readers get the body read
            return call.read(response)
        finally:
            await response.aclose()

    async def _experiment(self, experiment: str) -> ExperimentView:
        return await self.send(
            Call(
                "GET",
                f"/api/v1/experiments/{experiment}",
                read=lambda r: ExperimentView.read(r.json()),
            )
        )

    async def stream_events(self, after: str | None = None) -> AsyncIterator[ServerEvent]:
        """As Client.stream_events."""
        params = {"after": after} if after else {}
        async with self.http.stream(
            "GET",
            "/api/v1/events/stream",
            params=params,
            timeout=httpx.Timeout(60.0, read=None),
        ) as response:
            if not response.is_success:
                await response.aread()
                raise_for(response)
            lines: list[str] = []
            async for line in response.aiter_lines():
                lines.append(line)
                if not line:  # a blank line ends an event
                    for event in server_events(iter(lines)):
                        yield event
                    lines = []

    async def watch(self, experiment: str) -> AsyncIterator[dict[str, Any]]:
        """As Client.watch, reconnecting the same way."""
        latest = await self.send(
            Call("GET", "/api/v1/events", params={"limit": 1}, read=lambda r: r.json()["items"])
        )
        last = latest[0]["id"] if latest else None
        if (await self._experiment(experiment)).ended:
            return
        while True:
            try:
                async for event in self.stream_events(last):
                    last = event.id or last
                    envelope = event.json()
                    if not _subject_of(experiment, envelope):
                        continue
                    yield envelope
                    if envelope["type"] in ENDS:
                        return
            except httpx.TransportError:
                pass
            if (await self._experiment(experiment)).ended and last is None:
                return
            await asyncio.sleep(RECONNECT_S)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
