"""How a chat's answer travels back: a Redis stream per request, written by the GPU
worker that answers it and read by whoever asked (an HTTP function, a batch), and the
OpenAI shapes an answer is given in."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.events.service import ChatSettings

STREAM_TTL_S = 600


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI options are accepted, unused
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 8:
            raise ValueError(f"at most 8 stop strings, not {len(value)}")
        return value

    def chat_settings(self) -> ChatSettings:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return ChatSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens or 256,
            stop=stop,
        )


def stream_key(request_id: str) -> str:
    return f"tunelab:chat:{request_id}"


def decode(fields: dict[bytes, bytes]) -> tuple[str, dict[str, Any]]:
    return fields[b"kind"].decode(), json.loads(fields[b"body"])


def read_answer(
    client: Any, request_id: str, timeout_s: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, body) of each piece until `done` or `error`, for synchronous readers."""
    key, last = stream_key(request_id), "0"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for _, entries in client.xread({key: last}, block=2000, count=100) or []:
            for entry_id, fields in entries:
                last = entry_id
                kind, body = decode(fields)
                yield kind, body
                if kind in ("done", "error"):
                    client.delete(key)
                    return
    yield "error", {"code": "timeout", "message": "No answer came in time."}


def usage_of(done: dict[str, Any]) -> dict[str, int]:
    prompt, completion = done["usage"]["prompt_tokens"], done["usage"]["completion_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_body(chat_id: str, created: int, model: str, done: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI `chat.completion` object of a finished answer."""
    return {
        "id": chat_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done["content"]},
                "finish_reason": done.get("finish_reason") or "stop",
            }
        ],
        "usage": usage_of(done),
    }
