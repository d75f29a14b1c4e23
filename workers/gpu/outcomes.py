"""How a task ends: its final state and event, and for a success the fine-tuned model
registered in the repository, each in one transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select

from tunelab.db.models import Dataset, Model, Task
from tunelab.events.envelope import Event
from tunelab.events.experiment import (
    TaskCancelled,
    TaskFailed,
    TaskFailedData,
    TaskRef,
    TaskScheduled,
    TaskSucceeded,
    TaskSucceededData,
)
from tunelab.events.model import ModelRegistered, ModelRegisteredData
from tunelab.store import keys
from tunelab.workers.context import WorkerContext
from tunelab.workers.gpu.model_card import model_card

TERMINAL = ("succeeded", "failed", "cancelled")


class JobCrashed(RuntimeError):
    """The job process died of a fault worth a retry (it resumes from its checkpoint)."""


def finish(
    ctx: WorkerContext, event: TaskScheduled, status: str, error: dict[str, Any] | None
) -> Event:
    with ctx.db.session() as session:
        task = session.get(Task, event.data.task_id, with_for_update=True)
        if task is not None:
            if task.status not in TERMINAL:
                task.status, task.error = status, error
                task.finished_at = datetime.now(UTC)
            return outcome(ctx, event, task)
    return TaskCancelled.following(
        event, data=TaskRef(**{k: getattr(event.data, k) for k in TaskRef.model_fields})
    )


def outcome(ctx: WorkerContext, event: TaskScheduled, task: Task) -> Event:
    ref = TaskRef(**{k: getattr(event.data, k) for k in TaskRef.model_fields})
    if task.status == "succeeded":
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
    if task.status == "failed":
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


def register_model(ctx: WorkerContext, event: TaskScheduled, result: dict[str, Any]) -> Event:
    """The fine-tuned model into the repository and the task succeeded, in one
    transaction; the model's id is the task's, so a redelivery registers nothing twice."""
    data = event.data
    with ctx.db.session() as session:
        task = session.get(Task, data.task_id, with_for_update=True)
        if task is None:
            raise JobCrashed("the task disappeared while training")
        if task.status in TERMINAL:
            return outcome(ctx, event, task)  # cancelled while saving: no model
        dataset = session.get(Dataset, task.spec["dataset_id"])
        name = _model_name(session, task.workspace_id, data.experiment, task)
        spec = {
            "base_model": task.spec["base_model"],
            "base_model_uri": task.spec["base_model_uri"],
            "experiment": data.experiment,
            "task": data.task,
            "adapter": result["adapter"],
            "score": result["score"]["score"],
            "base_score": result["base_score"]["score"],
            "evaluation": result["score"],
            "dataset": {
                "name": task.spec["dataset"],
                "id": task.spec["dataset_id"],
                "sha256": result.get("dataset_sha256"),
                "rows": (dataset.stats or {}).get("train", {}).get("rows") if dataset else None,
            },
            "parameters": task.spec["parameters"],
            "chat_template": result.get("chat_template"),
            "stop_tokens": result.get("stop_tokens"),
            "metrics": {"final_loss": result["final_loss"], "steps": result["steps"]},
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
        task.status, task.model = "succeeded", name
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
        succeeded = outcome(ctx, event, task)
    send_model()
    return succeeded
