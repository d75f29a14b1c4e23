"""Helpers every HTTP function uses: JSON in and out, validation, the caller's workspace."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.errors import BadRequest, Invalid, TunelabError, excerpt
from tunelab.functions.boundary import parse_json

M = TypeVar("M", bound=BaseModel)


async def read_json(request: Request) -> Any:
    """The request's JSON body, parsed at the boundary (functions.boundary); BadRequest
    when it is not JSON."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        raise BadRequest(
            f"Send the body as application/json, not {excerpt(content_type) or 'nothing'}."
        )
    return parse_json(await request.body())


def details_of(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        details.append(
            {"field": f"{prefix}{field}" if field else prefix.rstrip("."), "message": message}
        )
    return details


def parse(
    model: type[M], data: Any, what: str = "request", refusal: type[TunelabError] = Invalid
) -> M:
    """Validate `data` as `model`; `refusal` (Invalid, 422) naming each bad field."""
    if not isinstance(data, dict):
        raise BadRequest(f"The {what} body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = details_of(exc)
        fields = ", ".join(d["field"] for d in details)
        raise refusal(f"The {what} has invalid fields: {fields}.", details) from None


def workspace_id(request: Request) -> str:
    return str(request.scope["workspace"].id)


def respond(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)
