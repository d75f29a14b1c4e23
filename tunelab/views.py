"""The native API's main answers as both sides read them: the HTTP functions pass what
they answer through these models, and the SDK (tunelab.client) parses answers with
the same ones, so neither can drift from the other. Fields the models do not name
are kept (`extra="allow"`): an answer may carry more than a client needs."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field


class View(BaseModel):
    model_config = ConfigDict(extra="allow")

    @classmethod
    def shown(cls, body: dict[str, Any]) -> dict[str, Any]:
        """`body` checked against the view, as the server answers it."""
        return cls.model_validate(body).model_dump(mode="json")

    @classmethod
    def read(cls, body: Any) -> Self:
        return cls.model_validate(body)


class DatasetView(View):
    name: str
    status: str
    """pending and validating (being checked), ready, failed, awaiting_upload."""
    error: dict[str, Any] | None = None
    """Why it failed: `details` name each problem's line and field."""
    warnings: list[dict[str, Any]] = Field(default_factory=list)
    kind: str | None = None
    splits: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source: dict[str, Any] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: str | None = None


class GroupView(View):
    name: str
    cluster: str
    namespace: str
    finetune_type: str
    parameters: dict[str, Any]
    created_at: str | None = None


class TaskView(View):
    name: str
    status: str
    base_model: str
    dataset: str
    validation_dataset: str | None = None
    parameter_group: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    score: float | None = None
    model: str | None = None
    error: dict[str, Any] | None = None


class ExperimentView(View):
    name: str
    status: str
    """queued, running, succeeded, failed or cancelled."""
    evaluation: str
    cluster: str = "local"
    namespace: str = "default"
    best_task: str | None = None
    error: dict[str, Any] | None = None
    tasks: list[TaskView] = Field(default_factory=list)
    created_at: str | None = None
    finished_at: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class ModelView(View):
    name: str
    kind: str
    status: str
    base_model: str | None = None
    experiment: str | None = None
    task: str | None = None
    score: float | None = None
    adapter: bool | None = None
    created_at: str | None = None


class ServiceView(View):
    name: str
    model: str
    status: str
    """deploying, ready or failed."""
    error: dict[str, Any] | None = None
    endpoint: str | None = None
    created_at: str | None = None
