"""Helpers every HTTP function uses: JSON in and out, validation, the caller's workspace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.errors import BadRequest, Invalid, NotFound, TunelabError, excerpt
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


def cursor_page(
    items: list[dict[str, Any]],
    params: Mapping[str, str],
    default_limit: int = 20,
    max_limit: int = 100,
) -> dict[str, Any]:
    """OpenAI's list page of `items` (in their order): those after the `after` id, at
    most `limit`, with `has_more`, `first_id` and `last_id`. Invalid for a bad limit,
    NotFound for an unknown `after`."""
    raw = params.get("limit", str(default_limit))
    limit = int(raw) if raw.isdigit() else 0
    if not 1 <= limit <= max_limit:
        raise Invalid(
            f"limit must be an integer from 1 to {max_limit}.",
            [{"field": "limit", "message": f"not an integer from 1 to {max_limit}"}],
        )
    start = 0
    after = params.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise NotFound(
                f"No item {excerpt(after)!s} to list after.",
                [{"field": "after", "message": "not found"}],
            )
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "has_more": start + limit < len(items),
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
