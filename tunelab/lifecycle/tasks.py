"""A task's life after it is accepted: scheduled, ended (succeeded, failed, cancelled),
and for a success the fine-tuned model registered in the repository. Each change is
recorded with its event in one transaction; an ending is announced with an id derived
from the task, so whoever ends it (a GPU worker, a training pod, the Kubernetes
reconciler, a retry) announces the very same event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select

from tunelab.context import Context
from tunelab.db.tables import Dataset, Experiment, Model, Task
from tunelab.events.envelope import Event, derived_id
from tunelab.events.experiment import (
    TaskCancelled,
    TaskFailed,
    TaskFailedData,
    TaskRef,
    TaskScheduled,
    TaskScheduledData,
    TaskSucceeded,
    TaskSucceededData,
)
from tunelab.events.model import ModelRegistered, ModelRegisteredData
from tunelab.lifecycle.specs import TaskSpec
from tunelab.lifecycle.states import TASK_TERMINAL, TaskState
from tunelab.model_card import model_card
from tunelab.store import keys


class TaskGone(LookupError):
    """The task was deleted (with its experiment) while it trained."""


def task_ref(task: Task, experiment: Experiment) -> dict[str, str]:
    return {
        "experiment_id": experiment.id,
        "experiment": experiment.name,
        "task_id": task.id,
        "task": task.name,
    }


def scheduled_event(task: Task, experiment: Experiment) -> TaskScheduled:
    """The task's `task.scheduled`; the same event (and id) whoever builds it again: the
    cause every later event of the task follows from."""
    return TaskScheduled(
        id=derived_id(f"{task.id}/task.scheduled"),
        workspace=task.workspace_id,
        subject=f"experiments/{experiment.name}/tasks/{task.name}",
        data=TaskScheduledData(**task_ref(task, experiment), cluster=task.cluster),
    )


def finish(
    ctx: Context, event: TaskScheduled, status: TaskState, error: dict[str, Any] | None
) -> Event:
    """End the task in `status` unless it has ended already; its outcome event (to be
    published by the caller)."""
    with ctx.db.session() as session:
        task = session.get(Task, event.data.task_id, with_for_update=True)
        if task is not None:
            if task.status not in TASK_TERMINAL:
                task.status, task.error = status, error
                task.finished_at = datetime.now(UTC)
            return outcome(event, task)
    return TaskCancelled.following(
        event, data=TaskRef(**{k: getattr(event.data, k) for k in TaskRef.model_fields})
    )


def fail_task(ctx: Context, task_id: str, code: str, message: str) -> None:
    """End the task `failed` with the reason, and announce it (once)."""
    with ctx.db.session() as session:
        task = session.get(Task, task_id)
        experiment = session.get(Experiment, task.experiment_id) if task else None
        if task is None or experiment is None or task.status in TASK_TERMINAL:
            return
        event = scheduled_event(task, experiment)
    ctx.bus.publish(finish(ctx, event, TaskState.FAILED, {"code": code, "message": message}))


def mark_evaluating(ctx: Context, task_id: str) -> None:
    with ctx.db.session() as session:
        task = session.get(Task, task_id)
        if task is not None and task.status == TaskState.TRAINING:
            task.status = TaskState.EVALUATING


def outcome(event: TaskScheduled, task: Task) -> Event:
    """The event that announces how the task ended."""
    ref = TaskRef(**{k: getattr(event.data, k) for k in TaskRef.model_fields})
    if task.status == TaskState.SUCCEEDED:
        score = task.score or {}
        return TaskSucceeded.following(
            event,
            data=TaskSucceededData(
                **ref.model_dump(),
                model=task.model or "",
                score=score.get("details", {}),
                base_score=score.get("base_score", {}),
            ),
        )
    if task.status == TaskState.FAILED:
        return TaskFailed.following(
            event, data=TaskFailedData(**ref.model_dump(), error=task.error or {})
        )
    return TaskCancelled.following(event, data=ref)


def _model_name(session: Any, workspace: str, experiment: str, task: Task) -> str:
    name = f"{experiment}-{task.name}"[:63].rstrip("-")
    taken = session.scalar(
        select(Model.id).where(
            or_(Model.workspace_id == workspace, Model.workspace_id.is_(None)), Model.name == name
        )
    )
    if taken and taken != task.id:
        name = f"{name[:56].rstrip('-')}-{task.id[:6]}"
    return name


def register_model(ctx: Context, event: TaskScheduled, result: dict[str, Any]) -> Event:
    """The fine-tuned model into the repository and the task succeeded, in one
    transaction; the model's id is the task's, so a redelivery registers nothing twice."""
    data = event.data
    with ctx.db.session() as session:
        task = session.get(Task, data.task_id, with_for_update=True)
        if task is None:
            raise TaskGone(f"task {data.task_id} was deleted while it trained")
        if task.status in TASK_TERMINAL:
            return outcome(event, task)  # cancelled while saving: no model
        task_spec = TaskSpec.of(task)
        dataset = session.get(Dataset, task_spec.dataset_id)
        name = _model_name(session, task.workspace_id, data.experiment, task)
        spec = {
            "base_model": task_spec.base_model,
            "base_model_uri": task_spec.base_model_uri,
            "experiment": data.experiment,
            "task": data.task,
            "adapter": result["adapter"],
            "score": result["score"]["score"],
            "base_score": result["base_score"]["score"],
            "evaluation": result["score"],
            "dataset": {
                "name": task_spec.dataset,
                "id": task_spec.dataset_id,
                "sha256": result.get("dataset_sha256"),
                "rows": (dataset.stats or {}).get("train", {}).get("rows") if dataset else None,
            },
            "parameters": task_spec.parameters,
            "chat_template": result.get("chat_template"),
            "stop_tokens": result.get("stop_tokens"),
            "metrics": {
                "final_loss": result["final_loss"],
                "steps": result["steps"],
                "trained_tokens": result.get("trained_tokens"),
            },
            "selection": result.get("selection"),
            "lineage": task_spec.lineage,
            "files": result["files"],
        }
        prefix = keys.model_prefix(task.id)
        ctx.store.put_bytes(f"{prefix}README.md", model_card(name, spec).encode())
        if session.get(Model, task.id) is None:
            session.add(
                Model(
                    id=task.id,
                    workspace_id=task.workspace_id,
                    name=name,
                    kind="finetuned",
                    uri=ctx.store.uri(prefix),
                    spec=spec,
                )
            )
        task.status, task.model = TaskState.SUCCEEDED, name
        task.score = {
            "score": spec["score"],
            "details": result["score"],
            "base_score": result["base_score"],
        }
        task.finished_at = datetime.now(UTC)
        send_model = ctx.bus.stage(
            session,
            ModelRegistered.following(
                event,
                data=(
                    ModelRegisteredData(
                        model_id=task.id,
                        name=name,
                        kind="finetuned",
                        base_model=spec["base_model"],
                        experiment=data.experiment,
                        task=data.task,
                    )
                ),
            ),
        )
        succeeded = outcome(event, task)
    send_model()
    return succeeded
