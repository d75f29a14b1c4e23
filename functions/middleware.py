"""ASGI middleware: request metrics and bearer-token auth (Idempotency-Key replay is in
functions/idempotency.py)."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.auth import TokenCache
from tunelab.errors import (
    Forbidden,
    TunelabError,
    Unauthorized,
    excerpt,
)
from tunelab.functions.permissions import required_role
from tunelab.functions.responses import SentStatus, error_response
from tunelab.metrics import HTTP_LATENCY, HTTP_REQUESTS

PROTECTED_PREFIXES = ("/api/", "/v1/")


def _error(scope: Scope, exc: TunelabError) -> JSONResponse:
    return error_response(scope["path"], exc)


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = SentStatus(send)
        try:
            await self.app(scope, receive, sent)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            HTTP_REQUESTS.labels(scope["method"], route, str(sent.status or 500)).inc()
            HTTP_LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)


class BearerAuth:
    """Puts the token's workspace in scope["workspace"] and its holder in
    scope["caller"]; 401 for a missing, bad, revoked or expired token, 403 when its role
    may not do what the route does (functions.permissions).

    A token verified in the last few seconds is taken from the app's TokenCache, in the
    event loop: most requests then cost no thread hop and no database round trip.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        tokens: TokenCache = scope["app"].state.tokens
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            response = _error(scope, Unauthorized("Send 'Authorization: Bearer <token>'."))
            await response(scope, receive, send)
            return
        caller = tokens.cached(token) or await run_in_threadpool(tokens.resolve, token)
        if caller is None:
            response = _error(
                scope,
                Unauthorized(
                    "The token is not valid (unknown, revoked or expired); create one with "
                    "'tunelab token create --workspace NAME'."
                ),
            )
            await response(scope, receive, send)
            return
        needed = required_role(scope["method"], scope["path"])
        if not caller.may(needed):
            forbidden = Forbidden(
                f"Token {caller.token_name!r} is a {caller.role}; "
                f"{scope['method']} {excerpt(scope['path'])} needs a {needed}."
            )
            await _error(scope, forbidden)(scope, receive, send)
            return
        scope["workspace"], scope["caller"] = caller.workspace, caller
        await self.app(scope, receive, send)
