"""What a call to the API is, apart from how it is sent: its request and how its answer
is read. The sync and async clients send the same calls (tunelab.client.api), so each
endpoint is written once."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

T = TypeVar("T")


class ApiError(Exception):
    """The API refused or failed: its status, contract code, message and details (each
    naming a field, and for a dataset's problems its line)."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.details = details or []


def _json(response: httpx.Response) -> Any:
    return response.json()


@dataclass
class Call(Generic[T]):
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    read: Callable[[httpx.Response], T] = _json
    content: Any = None
    """A body given whole or as chunks (an upload)."""
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    """Answered as a stream: `read` gets the response with its body unread."""

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        params = {k: v for k, v in (self.params or {}).items() if v is not None}
        return http.build_request(
            self.method,
            self.path,
            json=self.json,
            params=params,
            content=self.content,
            headers=self.headers,
        )


def raise_for(response: httpx.Response) -> None:
    """ApiError for an answer that is not a success, in either of the API's shapes."""
    if response.is_success:
        return
    try:
        error = response.json().get("error") or {}
    except (json.JSONDecodeError, AttributeError):
        error = {}
    details = error.get("details")
    if details is None and error.get("param"):  # OpenAI's shape, under /v1
        details = [{"field": error["param"], "message": error.get("message", "")}]
    raise ApiError(
        response.status_code,
        error.get("code") or "http_error",
        error.get("message") or response.text[:300] or response.reason_phrase,
        details,
    )


@dataclass
class Multipart:
    """A multipart/form-data body read from the files as it is sent (each open only
    while it is), telling `on_bytes` how much of the files went: a progress bar's feed.
    Its boundary is random, so no file's bytes can hold it but by chance."""

    files: dict[str, Path]
    fields: dict[str, str]
    on_bytes: Callable[[int], None] | None = None
    chunk: int = 1 << 18
    boundary: str = field(default_factory=lambda: f"tunelab-{secrets.token_hex(16)}")

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": f"multipart/form-data; boundary={self.boundary}"}

    def __iter__(self) -> Iterator[bytes]:
        for name, value in self.fields.items():
            yield (
                f"--{self.boundary}\r\nContent-Disposition: form-data; "
                f'name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        for name, path in self.files.items():
            filename = path.name.replace("\\", "\\\\").replace('"', '\\"')
            yield (
                f"--{self.boundary}\r\nContent-Disposition: form-data; "
                f'name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            with path.open("rb") as stream:
                while piece := stream.read(self.chunk):
                    if self.on_bytes is not None:
                        self.on_bytes(len(piece))
                    yield piece
            yield b"\r\n"
        yield f"--{self.boundary}--\r\n".encode()


@dataclass
class ServerEvent:
    """One server-sent event: tunelab's lifecycle event (`data` its envelope), or a
    chat's piece."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def server_events(lines: Iterator[str]) -> Iterator[ServerEvent]:
    """Server-sent events from a stream's lines (comments and pings skipped)."""
    event, data, last_id = "message", list[str](), None
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(event, "\n".join(data), last_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
    if data:
        yield ServerEvent(event, "\n".join(data), last_id)
