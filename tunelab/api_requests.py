"""What the native API's clients send, as the server validates it: the HTTP functions
parse requests with these models, and the SDK (tunelab.client) checks a request with
them before it is sent, so both give the same messages. Light to import: no database,
no web framework."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.names import Name
from tunelab.params import presets
from tunelab.serving.openai import MAX_TOKENS_LIMIT, Message

Role = Literal["viewer", "member", "admin"]
"""A token's role (tunelab.auth.ROLES orders them)."""


class GroupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    cluster: Name = "local"
    namespace: Name = "default"
    finetune_type: Literal["SFT", "DPO"] | None = None
    """SFT or DPO; unset: the preset's (or the parameters') choice, else SFT."""
    preset: str | None = None
    """Start from a shipped preset (GET /api/v1/parameter-presets); `parameters` on top."""
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("preset")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and value not in presets():
            raise ValueError(f"no preset {value!r}; presets: {sorted(presets())}")
        return value


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    role: Role = "member"
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    services: list[str] = Field(min_length=1, max_length=3)
    messages: list[Message] = Field(min_length=1)
    system: str | None = None
    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=128, ge=1, le=MAX_TOKENS_LIMIT)
    stream: bool = False
    store: bool | None = None
    """Keep each service's chat (as `store` on /v1/chat/completions)."""
    comparison_id: str | None = Field(default=None, pattern=r"^cmp-[0-9a-f]{32}$")
    """Group the answers with others asked under the same id (a client asking each
    service on its own, with its own history, as the console does); default: new."""


class Feedback(BaseModel):
    """A person's (or a script's) vote for the best answer of a comparison."""

    model_config = ConfigDict(extra="forbid")
    comparison_id: str = Field(pattern=r"^cmp-[0-9a-f]{32}$")
    """`comparison_id` of a POST /api/v1/chat/compare answer."""
    best: Name
    """The service whose answer was best."""
