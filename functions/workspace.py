"""`GET /api/v1/workspace`: whose token the client holds."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.functions.http import respond


async def whoami(request: Request) -> JSONResponse:
    return respond({"name": request.scope["workspace"].name})
