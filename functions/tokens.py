"""The workspace's API tokens (admins): list them, make one (its secret is shown once),
revoke one (refused everywhere within TUNELAB_TOKEN_CACHE_S seconds)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.api_requests import TokenRequest
from tunelab.auth import TokenNameTaken, create_token, list_tokens, revoke_token
from tunelab.db.tables import ApiToken
from tunelab.errors import Conflict, NotFound
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.times import iso


def to_json(token: ApiToken) -> dict[str, Any]:
    return {
        "name": token.name,
        "role": token.role,
        "prefix": token.prefix,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
    }


def get_tokens(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        return respond({"items": [to_json(t) for t in list_tokens(session, workspace_id(request))]})


async def post_token(request: Request) -> JSONResponse:
    spec = parse(TokenRequest, await read_json(request), "token")
    return respond(await run_in_threadpool(_create, request, spec), 201)


def _create(request: Request, spec: TokenRequest) -> dict[str, Any]:
    state = request.app.state
    expires = timedelta(days=spec.expires_in_days) if spec.expires_in_days else None
    try:
        secret = create_token(
            state.db,
            request.scope["workspace"].name,
            name=spec.name,
            role=spec.role,
            expires_in=expires,
        )
    except TokenNameTaken:
        raise Conflict(f"A token named {spec.name!r} already exists.") from None
    with state.db.session() as session:
        (made,) = [t for t in list_tokens(session, workspace_id(request)) if t.name == spec.name]
        return {**to_json(made), "token": secret}


def delete_token(request: Request) -> JSONResponse:
    name = request.path_params["name"]
    with request.app.state.db.session() as session:
        token = revoke_token(session, workspace_id(request), name)
        if token is None:
            raise NotFound(f"No token named {name!r}.")
        return respond(to_json(token))
