"""Experiments: create (every rule checked before anything is stored), read, cancel."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.tables import Experiment, Task
from tunelab.errors import Conflict, NotFound
from tunelab.experiment_rules import (
    ExperimentRequest,
)
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.lifecycle import experiments as lifecycle
from tunelab.lifecycle.creation import create
from tunelab.lifecycle.specs import ExperimentSpec, TaskSpec
from tunelab.times import iso
from tunelab.views import ExperimentView


def task_json(task: Task) -> dict[str, Any]:
    spec = TaskSpec.of(task)
    return {
        "name": task.name,
        "status": task.status,
        "base_model": spec.base_model,
        "dataset": spec.dataset,
        "validation_dataset": spec.validation_dataset,
        "parameter_group": spec.parameter_group,
        "overrides": spec.overrides,
        "parameters": spec.parameters,
        "compute": spec.compute.model_dump(),
        "resources": spec.resources_requested,
        "trial": spec.trial.model_dump(exclude={"spec"}) if spec.trial else None,
        "progress": task.progress,
        "metrics": task.metrics,
        "score": (task.score or {}).get("score"),
        "evaluation": (task.score or {}).get("details"),
        "base_score": (task.score or {}).get("base_score"),
        "model": task.model,
        "error": task.error,
        "started_at": iso(task.started_at) if task.started_at else None,
        "finished_at": iso(task.finished_at) if task.finished_at else None,
    }


def to_json(experiment: Experiment, tasks: list[Task]) -> dict[str, Any]:
    spec = ExperimentSpec.of(experiment)
    return ExperimentView.shown(
        {
            "name": experiment.name,
            "evaluation": spec.evaluation,
            "cluster": spec.cluster,
            "namespace": spec.namespace,
            "status": experiment.status,
            "best_task": experiment.best_task,
            "error": experiment.error,
            "tasks": [task_json(t) for t in tasks],
            "created_at": iso(experiment.created_at),
            "finished_at": iso(experiment.finished_at) if experiment.finished_at else None,
        }
    )


def tasks_of(session: Session, experiment: Experiment) -> list[Task]:
    return list(
        session.scalars(
            select(Task).where(Task.experiment_id == experiment.id).order_by(Task.position)
        )
    )


def find(session: Session, workspace: str, name: str) -> Experiment:
    experiment = session.scalar(
        select(Experiment).where(Experiment.workspace_id == workspace, Experiment.name == name)
    )
    if experiment is None:
        raise NotFound(f"No experiment named {name!r} in this workspace.")
    return experiment


async def create_experiment(request: Request) -> JSONResponse:
    spec = parse(ExperimentRequest, await read_json(request), "experiment")
    state, workspace = request.app.state, workspace_id(request)
    experiment, tasks = await run_in_threadpool(create, state, workspace, spec)
    return respond(to_json(experiment, tasks), 202)


def list_experiments(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(Experiment)
            .where(Experiment.workspace_id == workspace_id(request))
            .order_by(Experiment.created_at.desc())
        )
        return respond({"items": [to_json(e, tasks_of(session, e)) for e in rows]})


def get_experiment(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        experiment = find(session, workspace_id(request), request.path_params["name"])
        return respond(to_json(experiment, tasks_of(session, experiment)))


def cancel_experiment(request: Request) -> JSONResponse:
    """Queued tasks are cancelled at once; training ones are stopped by their worker,
    which watches the task's status, within seconds."""
    state = request.app.state
    with state.db.session() as session:
        experiment = find(session, workspace_id(request), request.path_params["name"])
        tasks = tasks_of(session, experiment)
        try:
            send = lifecycle.cancel_experiment(state.context, session, experiment, tasks)
        except lifecycle.AlreadyEnded as exc:
            raise Conflict(str(exc)) from None
        body = to_json(experiment, tasks)
    send()
    return respond(body, 202)
