"""The one input boundary every request crosses: its body is limited by size before
anything is parsed, and JSON is parsed here only, with a depth limit and without NaN or
Infinity, so that nothing behind it meets a value it cannot store or send back.

Errors name what they refuse and where, and echo at most a short excerpt of it.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.errors import BadRequest, TooLarge
from tunelab.functions.responses import SentStatus, error_response

MAX_JSON_BYTES = 4 << 20
"""A JSON body: a long chat history fits many times over."""
MAX_UPLOAD_BYTES = 160 << 20
"""A multipart upload: three dataset files of 50 MB (train, validate, test) and fields."""
MAX_JSONL_BYTES = 51 << 20
"""A JSONL body (a batch file of 50 MB)."""
MAX_DEPTH = 64
"""Nesting of objects and arrays: no request of the contract needs more than a few."""


def body_limit(content_type: str) -> int:
    if content_type.startswith("multipart/form-data"):
        return MAX_UPLOAD_BYTES
    if content_type.startswith(("application/jsonl", "application/x-ndjson")):
        return MAX_JSONL_BYTES
    return MAX_JSON_BYTES


class BodyLimit:
    """Refuses a body over its content type's limit with 413, by its Content-Length at
    once or the moment it crosses the limit, whichever route it is for, before anything
    reads the rest (uploads hold their own, smaller, per-file limits too); and a path or
    query with a NUL character (no database stores one) with 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            nul = BadRequest("The request's path or query holds a NUL character.")
            await error_response(scope["path"].replace("\x00", ""), nul)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = body_limit(headers.get("content-type", ""))
        too_large = TooLarge(f"The request body is over {limit >> 20} MB, its limit.")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error_response(scope["path"], too_large)(scope, receive, send)
            return
        seen, sent = 0, SentStatus(send)

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large
            return message

        try:
            await self.app(scope, limited, sent)
        except TooLarge as exc:
            if exc is not too_large or sent.started:
                raise
            await error_response(scope["path"], too_large)(scope, receive, send)


class _Constant:
    """Where the body held NaN, Infinity or -Infinity (found after parsing, by path)."""

    def __init__(self, name: str) -> None:
        self.name = name


def parse_json(raw: bytes | str, what: str = "body") -> Any:
    """The JSON value of `raw`; BadRequest naming what is wrong and where (not UTF-8,
    not JSON, nested deeper than MAX_DEPTH, NaN or Infinity)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"The {what} is not UTF-8 (byte {exc.start}).") from None
    try:
        value = json.loads(raw, parse_constant=_Constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"The {what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
    except RecursionError:
        raise BadRequest(f"The {what} is nested deeper than {MAX_DEPTH} levels.") from None
    _check(value, what)
    return value


def _check(value: Any, what: str) -> None:
    """Depth, constants and NUL characters, walked without recursion."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:  # JSON allows it; no text column (PostgreSQL's) does
                raise BadRequest(
                    f"The {what} holds a NUL character" + (f" at {path}." if path else "."),
                    [{"field": path or what, "message": "a NUL character"}],
                )
            continue
        if isinstance(item, _Constant):
            where = f" at {path}" if path else ""
            raise BadRequest(
                f"The {what} holds {item.name}{where}: JSON has no NaN or Infinity; "
                "send a number or null.",
                [{"field": path or what, "message": f"{item.name} is not a JSON number"}],
            )
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise BadRequest(f"The {what} is nested deeper than {MAX_DEPTH} levels.")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and "\x00" in key:
                    stack.append((key, path, depth))
                if isinstance(child, dict | list | _Constant | str):
                    stack.append((child, _step(path, key), depth + 1))


def _step(path: str, key: int | str) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
