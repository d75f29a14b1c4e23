"""The states of what a person follows, and the moves between them.

Every state change of a task, an experiment or a service happens in this package
(tasks.py, experiments.py, services.py), whoever asks for it: the local GPU worker, the
Kubernetes backend or an HTTP function.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class TaskState(StrEnum):
    QUEUED = "queued"
    TRAINING = "training"
    EVALUATING = "evaluating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExperimentState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ServiceState(StrEnum):
    DEPLOYING = "deploying"
    READY = "ready"
    FAILED = "failed"


TASK_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})
TASK_HOLDING = frozenset({TaskState.TRAINING, TaskState.EVALUATING})
"""Tasks that hold their cluster's resources."""
TASK_ACTIVE = frozenset({TaskState.QUEUED, *TASK_HOLDING})
EXPERIMENT_ACTIVE = frozenset({ExperimentState.QUEUED, ExperimentState.RUNNING})
EXPERIMENT_TERMINAL = frozenset(
    {ExperimentState.SUCCEEDED, ExperimentState.FAILED, ExperimentState.CANCELLED}
)
SERVICE_LIVE = frozenset({ServiceState.DEPLOYING, ServiceState.READY})
"""Services that hold (or wait for) a place on a model server."""

TASK_MOVES: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.TRAINING, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.TRAINING: frozenset(
        {TaskState.EVALUATING, TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}
    ),
    TaskState.EVALUATING: frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}),
    **{state: frozenset() for state in TASK_TERMINAL},
}
SERVICE_MOVES: dict[ServiceState, frozenset[ServiceState]] = {
    ServiceState.DEPLOYING: frozenset({ServiceState.READY, ServiceState.FAILED}),
    ServiceState.READY: frozenset({ServiceState.FAILED}),
    ServiceState.FAILED: frozenset(),
}


def may_move(moves: Mapping[Any, frozenset[Any]], current: str, to: str) -> bool:
    """Whether `current` may become `to` (a state never moves to itself)."""
    return to in moves.get(current, frozenset())
