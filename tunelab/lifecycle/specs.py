"""What an experiment, a task and a service were accepted with, as typed models: the JSON `spec` of
their rows is written from these and read back through them, never by string paths."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from tunelab.db.tables import Experiment, Service, Task
from tunelab.experiment_rules import Compute, ExperimentRequest
from tunelab.quantity import parse_quantity
from tunelab.serving_rules import DeployRequest


class Span(BaseModel):
    """A request and a limit: cores or bytes (as parsed when the task was accepted)."""

    request: float | str
    limit: float | str

    def values(self) -> tuple[float, float]:
        return float(parse_quantity(self.request)), float(parse_quantity(self.limit))


class TaskChoice(BaseModel):
    """What one of an experiment's tasks was asked to train on."""

    model_config = ConfigDict(extra="ignore")
    name: str
    base_model: str
    dataset: str
    validation_dataset: str | None = None
    parameter_group: str


class ExperimentSpec(BaseModel):
    """An experiment as it was accepted (its request, validated then; the defaults are
    the request's). Its tasks are rows of their own, each with its TaskSpec."""

    model_config = ConfigDict(extra="ignore")
    evaluation: str = ExperimentRequest.model_fields["evaluation"].default
    cluster: str = ExperimentRequest.model_fields["cluster"].default
    namespace: str = ExperimentRequest.model_fields["namespace"].default
    tasks: list[TaskChoice] = Field(default_factory=list)

    @classmethod
    def of(cls, experiment: Experiment) -> Self:
        return cls.model_validate(experiment.spec)


class TaskResources(BaseModel):
    cpu: Span
    memory: Span


class Trial(BaseModel):
    """A task that is one trial of a search (the request's task it came from)."""

    search: str
    number: int
    values: dict[str, Any]
    parallel: int
    spec: dict[str, Any] | None = None
    """A tpe search as it was asked for: what asks for its next trials as trials end."""


class TaskNeeds(BaseModel):
    """What a task holds while it trains: what schedulers and Jobs read."""

    model_config = ConfigDict(extra="ignore")
    compute: Compute
    resources: TaskResources
    trial: Trial | None = None
    """Set when the task is a trial of a search, whose `parallel` caps its running trials."""

    @classmethod
    def of(cls, task: Task) -> Self:
        return cls.model_validate(task.spec)

    @property
    def processes(self) -> int:
        """Processes the task trains in (one per GPU; on the CPU, its gpu_count)."""
        return max(1, self.compute.gpu_count)


class TaskSpec(TaskNeeds):
    """A task as its experiment was accepted: everything its training needs."""

    model_config = ConfigDict(extra="ignore")  # rows may carry what older versions kept
    base_model: str
    base_model_uri: str
    adapter_uri: str | None = None
    """When the task continues a LoRA model: that model's adapter, on base_model_uri."""
    lineage: list[dict[str, str]] = Field(default_factory=list)
    """The fine-tuned models the task continues from, nearest first (name and id)."""
    dataset: str
    dataset_id: str
    validation_dataset: str | None = None
    """Where the validate split comes from when another dataset gives it."""
    parameter_group: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    resources_requested: dict[str, Any] = Field(default_factory=dict)
    """The quantities as the request spelt them (`"500m"`, `"4Gi"`)."""
    evaluation: str
    namespace: str
    files: dict[str, str]
    """Object-store URIs of the dataset's files, by split."""
    parameters: dict[str, Any]


class ServiceSpec(BaseModel):
    """A service as it was deployed: its model and the request it was deployed with."""

    model_config = ConfigDict(extra="ignore")
    model_id: str
    request: DeployRequest

    @classmethod
    def of(cls, service: Service) -> Self:
        return cls.model_validate(service.spec)
