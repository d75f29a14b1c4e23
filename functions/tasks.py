"""A task's records as it trains: its metrics by step and its log."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from tunelab.db.tables import Task
from tunelab.errors import NotFound
from tunelab.functions.experiments import find
from tunelab.functions.http import respond, workspace_id
from tunelab.store import ObjectNotFound, keys


def _task(session: Session, request: Request) -> Task:
    experiment = find(session, workspace_id(request), request.path_params["name"])
    task = session.scalar(
        select(Task).where(
            Task.experiment_id == experiment.id, Task.name == request.path_params["task"]
        )
    )
    if task is None:
        raise NotFound(
            f"Experiment {experiment.name!r} has no task {request.path_params['task']!r}."
        )
    return task


def task_metrics(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        task = _task(session, request)
    try:
        raw = request.app.state.store.read_bytes(keys.task_file(task.id, "metrics.jsonl"))
    except ObjectNotFound:
        raw = b""
    return respond({"points": [json.loads(line) for line in raw.splitlines() if line]})


def task_logs(request: Request) -> PlainTextResponse:
    with request.app.state.db.session() as session:
        task = _task(session, request)
    try:
        text = request.app.state.store.read_bytes(keys.task_file(task.id, "logs.txt")).decode()
    except ObjectNotFound:
        text = ""
    return PlainTextResponse(text)
