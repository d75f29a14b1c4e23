"""tunelab's one error tree: each error knows its HTTP status and contract code."""

from __future__ import annotations

from typing import Any

MAX_MESSAGE_CHARS = 1000
MAX_DETAIL_CHARS = 300
MAX_DETAILS = 100


def excerpt(value: object, limit: int = 80) -> str:
    """`value` as text, cut to about `limit` characters: what an error may echo of it."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class TunelabError(Exception):
    """Base of every error tunelab raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        # Messages quote what they refuse: whatever a request held, only so much of it
        # comes back (a 60 MB name would otherwise come back whole).
        message = excerpt(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.details = [
            {k: excerpt(v, MAX_DETAIL_CHARS) if isinstance(v, str) else v for k, v in d.items()}
            for d in (details or [])[:MAX_DETAILS]
        ]

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(TunelabError):
    """The request is malformed (not JSON, wrong content type)."""

    status, code = 400, "bad_request"


class Unauthorized(TunelabError):
    """No token, or one that is not known."""

    status, code = 401, "unauthorized"


class Forbidden(TunelabError):
    """The token's role may not do this."""

    status, code = 403, "forbidden"


class NotFound(TunelabError):
    """The resource does not exist in the caller's workspace."""

    status, code = 404, "not_found"


class MethodNotAllowed(TunelabError):
    """The route exists but not for this method."""

    status, code = 405, "method_not_allowed"


class Conflict(TunelabError):
    """The name is taken or the resource is in the wrong state."""

    status, code = 409, "conflict"


class TooLarge(TunelabError):
    """The body or file is over its limit."""

    status, code = 413, "too_large"


class Invalid(TunelabError):
    """Well-formed but invalid; `details` name the fields."""

    status, code = 422, "invalid"


class Unavailable(TunelabError):
    """A dependency (broker, database, object store) cannot be reached."""

    status, code = 503, "unavailable"


class PermanentFailure(TunelabError):
    """Work that must not be retried: the input itself is wrong."""

    status, code = 422, "permanent_failure"
