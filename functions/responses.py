"""How answers are shaped on the way out: an error in the contract of its route (OpenAI's
under /v1, tunelab's elsewhere), and a `send` that notes how a response began."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import Message, Send

from tunelab.errors import TunelabError
from tunelab.serving import openai

OPENAI_PREFIX = "/v1/"
"""Routes of OpenAI's API: their errors take OpenAI's shape, whatever the status."""


def error_response(
    path: str, exc: TunelabError, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error as the route's contract shapes it: OpenAI's under /v1, tunelab's else."""
    if path.startswith(OPENAI_PREFIX):
        param = exc.details[0].get("field") if exc.details else None
        body = openai.error(exc.status, exc.message, exc.code, param)
    else:
        body = exc.to_json()
    return JSONResponse(body, status_code=exc.status, headers=headers)


class SentStatus:
    """An ASGI `send` that notes the response's status (None until it has started), for
    middleware that acts on how a request ended."""

    def __init__(self, send: Send) -> None:
        self.send, self.status = send, None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)

    @property
    def started(self) -> bool:
        return self.status is not None
