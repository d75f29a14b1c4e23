"""Experiment and task lifecycle events."""

from __future__ import annotations

from typing import Any, Literal

from tunelab.events.envelope import Event, Payload


class ExperimentRef(Payload):
    experiment_id: str
    name: str


class TaskRef(Payload):
    experiment_id: str
    experiment: str
    task_id: str
    task: str


class ExperimentCreated(Event):
    type: Literal["experiment.created"] = "experiment.created"
    data: ExperimentRef


class ExperimentCancelled(Event):
    type: Literal["experiment.cancelled"] = "experiment.cancelled"
    data: ExperimentRef


class ExperimentFinishedData(ExperimentRef):
    status: str
    best_task: str | None


class ExperimentSucceeded(Event):
    type: Literal["experiment.succeeded"] = "experiment.succeeded"
    data: ExperimentFinishedData


class ExperimentFailed(Event):
    type: Literal["experiment.failed"] = "experiment.failed"
    data: ExperimentFinishedData


class TaskScheduledData(TaskRef):
    cluster: str


class TaskScheduled(Event):
    """A task got its resources; the GPU worker trains it."""

    type: Literal["task.scheduled"] = "task.scheduled"
    data: TaskScheduledData


class TaskProgressData(TaskRef):
    step: int
    total_steps: int
    epoch: float
    loss: float | None
    """None when the loss is not a number (training diverged)."""
    learning_rate: float
    tokens_per_second: float
    val_loss: float | None = None
    """The latest validation loss, where training watches one."""


class TaskProgress(Event):
    type: Literal["task.progress"] = "task.progress"
    data: TaskProgressData


class TaskSucceededData(TaskRef):
    model: str
    score: dict[str, Any]
    base_score: dict[str, Any]


class TaskSucceeded(Event):
    type: Literal["task.succeeded"] = "task.succeeded"
    data: TaskSucceededData


class TaskFailedData(TaskRef):
    error: dict[str, Any]


class TaskFailed(Event):
    type: Literal["task.failed"] = "task.failed"
    data: TaskFailedData


class TaskCancelled(Event):
    type: Literal["task.cancelled"] = "task.cancelled"
    data: TaskRef
