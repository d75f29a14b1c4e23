"""OpenAI's fine-tuning jobs API (`/v1/fine_tuning/jobs`): a job is a one-task
experiment with a parameter group of its own (tunelab.fine_tuning), read back as
OpenAI's job, event and checkpoint objects."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.tables import (
    Dataset,
    EventRecord,
    Experiment,
    FineTuningJob,
    Model,
    ParameterGroup,
    Task,
    Workspace,
)
from tunelab.errors import BadRequest, Conflict, Invalid, NotFound, TunelabError
from tunelab.experiment_rules import ExperimentRequest, TaskRequest
from tunelab.fine_tuning import (
    STATUS,
    TASK,
    JobRequest,
    group_values,
    job_model_name,
    job_of_model_name,
    job_task,
    new_job_id,
    request_field,
    service_name,
    shown_hyperparameters,
)
from tunelab.functions import experiments
from tunelab.functions.http import cursor_page, parse, read_json, respond, workspace_id
from tunelab.lifecycle import experiments as lifecycle
from tunelab.lifecycle.creation import create as create_experiment
from tunelab.lifecycle.fine_tuning import (
    FILE_FIELDS,
    WAITING,
    fail_waiting_job,
    start_waiting_jobs,
)
from tunelab.lifecycle.services import visible_model
from tunelab.params import errors_of, resolve
from tunelab.store import ObjectNotFound, keys
from tunelab.times import epoch

EVENT_MESSAGES = {
    "experiment.created": ("info", "Created fine-tuning job."),
    "task.scheduled": ("info", "Fine-tuning job started."),
    "task.succeeded": ("info", "New fine-tuned model created."),
    "experiment.succeeded": ("info", "The job has successfully completed."),
    "experiment.failed": ("error", "The job failed."),
    "task.failed": ("error", "The job failed"),
    "experiment.cancelled": ("info", "The job was cancelled."),
}


class JobRefused(BadRequest):
    """A job OpenAI would refuse with 400: its `param` is the first detail's field."""

    code = "invalid_request"


def _refusal(exc: TunelabError, spec: JobRequest) -> JobRefused:
    details = [{**d, "field": request_field(d.get("field", ""), spec)} for d in exc.details] or [
        {"field": None, "message": exc.message}
    ]
    first = details[0]
    where = f"{first['field']}: " if first.get("field") else ""
    return JobRefused(f"{where}{first['message']}", details)


async def create_job(request: Request) -> JSONResponse:
    spec = parse(JobRequest, await read_json(request), "fine-tuning job", JobRefused)
    return respond(await run_in_threadpool(_create, request, spec))


def _create(request: Request, spec: JobRequest) -> dict[str, Any]:
    state, workspace = request.app.state, workspace_id(request)
    with state.db.session() as session:
        base_model = _repository_name(session, workspace, spec)
        model = visible_model(session, workspace, base_model)
        if model is None or model.status != "ready":
            # Refused now, even for a job that would wait for its files: OpenAI does.
            message = (
                f"no model {spec.model!r} (GET /v1/models)"
                if model is None
                else f"model {spec.model!r} is {model.status}, not ready"
            )
            raise JobRefused(f"model: {message}", [{"field": "model", "message": message}])
        checking = [
            field
            for field in FILE_FIELDS
            if getattr(spec, field) is not None
            and _still_checked(session, workspace, field, getattr(spec, field))
        ]
    try:
        params = resolve(spec.preset, group_values(spec))
    except ValidationError as exc:
        raise _refusal(Invalid("", errors_of(exc, "parameters")), spec) from None
    job_id = new_job_id()
    group = ParameterGroup(
        workspace_id=workspace,
        name=job_id,
        cluster="local",
        namespace="default",
        finetune_type=params.finetune_type,
        parameters=params.model_dump(mode="json"),
    )
    with state.db.session() as session:
        session.add(group)
    experiment_request = ExperimentRequest(
        name=job_id,
        evaluation=spec.scored_by(),
        tasks=[
            TaskRequest(
                name=TASK,
                base_model=base_model,
                dataset=spec.training_file,
                validation_dataset=spec.validation_file,
                parameter_group=job_id,
            )
        ],
    )
    shown = {
        "model": spec.model,
        "training_file": spec.training_file,
        "validation_file": spec.validation_file,
        "suffix": spec.suffix,
        "metadata": spec.metadata,
        "method": spec.kind,
        "hyperparameters": shown_hyperparameters(params.model_dump(), spec),
        "seed": params.seed,
        "deploy": spec.deploy,
    }

    if checking:
        # As OpenAI's jobs do, it waits (`validating_files`) and starts when its files
        # are processed (tunelab.lifecycle.fine_tuning.start_waiting_jobs).
        waiting = {
            **shown,
            "state": WAITING,
            "waited_for": checking,
            "experiment": experiment_request.model_dump(mode="json"),
        }
        with state.db.session() as session:
            session.add(FineTuningJob(id=job_id, workspace_id=workspace, spec=waiting))
        # Its files' checks may have ended before the job was stored: look once more.
        start_waiting_jobs(state.context, workspace, getattr(spec, checking[0]))
        with state.db.session() as session:
            return job_json(session, _find(session, workspace, job_id))

    def along(session: Session, experiment: Experiment) -> None:
        session.add(
            FineTuningJob(
                id=job_id, workspace_id=workspace, experiment_id=experiment.id, spec=shown
            )
        )

    try:
        create_experiment(state, workspace, experiment_request, along)
    except TunelabError as exc:
        # Refused before anything was stored: the job's group goes with the job that
        # was not made. (A failure to send the event after the commit leaves the job,
        # as for any experiment.)
        with state.db.session() as session:
            session.query(ParameterGroup).filter_by(workspace_id=workspace, name=job_id).delete()
        if isinstance(exc, Invalid):
            raise _refusal(exc, spec) from None
        raise
    with state.db.session() as session:
        return job_json(session, _find(session, workspace, job_id))


def _repository_name(session: Session, workspace: str, spec: JobRequest) -> str:
    """The repository's name of the model to train from: an `ft:` name is its job's."""
    job_id = job_of_model_name(spec.model)
    if job_id is None:
        return spec.model
    job = session.get(FineTuningJob, job_id)
    task = job_task(session, job) if job is not None and job.workspace_id == workspace else None
    if task is None or task.model is None:
        raise JobRefused(
            f"model: no fine-tuned model {spec.model!r} (its job has not succeeded).",
            [{"field": "model", "message": "not a fine-tuned model of this workspace"}],
        )
    return task.model


def _still_checked(session: Session, workspace: str, field: str, file_id: str) -> bool:
    """Whether the file is still being checked; refused if it is no file or invalid."""
    dataset = session.scalar(
        select(Dataset).where(Dataset.workspace_id == workspace, Dataset.name == file_id)
    )
    message = None
    if dataset is None or (dataset.source or {}).get("purpose") != "fine-tune":
        message = f"no file {file_id!r} (POST /v1/files)"
    elif dataset.status == "failed":
        message = f"file {file_id!r} is invalid: {(dataset.error or {}).get('message')}"
    if message is not None:
        raise JobRefused(f"{field}: {message}", [{"field": field, "message": message}])
    return dataset is not None and dataset.status in ("pending", "validating")


def _find(session: Session, workspace: str, job_id: str) -> FineTuningJob:
    job = session.get(FineTuningJob, job_id)
    if job is None or job.workspace_id != workspace:
        raise NotFound(
            f"No fine-tuning job {job_id!r}.", [{"field": "fine_tuning_job_id", "message": "?"}]
        )
    return job


def fine_tuned_model(session: Session, job: FineTuningJob) -> str | None:
    """The job's `ft:` model name once it has a model, else None."""
    task = job_task(session, job)
    return job_model_name(session, job) if task is not None and task.model is not None else None


def repository_model(session: Session, job: FineTuningJob) -> str | None:
    """The name of the job's model in tunelab's repository, once it has one."""
    task = job_task(session, job)
    return task.model if task is not None else None


def _registered(session: Session, task: Task | None) -> dict[str, Any]:
    """The spec of the model the job's task registered (its id is the task's), or {}."""
    model = session.get(Model, task.id) if task is not None else None
    return model.spec if model is not None else {}


def trained_tokens(session: Session, task: Task | None) -> int | None:
    """The real tokens the job's training steps took in (OpenAI bills by them)."""
    return (_registered(session, task).get("metrics") or {}).get("trained_tokens")


def job_json(session: Session, job: FineTuningJob) -> dict[str, Any]:
    experiment = session.get(Experiment, job.experiment_id) if job.experiment_id else None
    task = job_task(session, job) if experiment is not None else None
    spec = job.spec
    error = None
    if experiment is None:  # waiting for its files' checks, or ended while it waited
        status = spec.get("state", "failed")
        error = spec.get("error")
        finished = spec.get("finished_at")
        finished_at = epoch(datetime.fromisoformat(finished)) if finished else None
    else:
        status = STATUS[experiment.status]  # type: ignore[index]
        if status == "queued" and task is not None and task.status != "queued":
            status = "running"
        if status == "failed":
            cause = (task.error if task is not None else None) or experiment.error or {}
            error = {
                "code": cause.get("code", "failed"),
                "message": cause.get("message", ""),
                "param": None,
            }
        finished_at = epoch(experiment.finished_at) if experiment.finished_at else None
    hyperparameters = spec["hyperparameters"]
    workspace = session.get(Workspace, job.workspace_id)
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": epoch(job.created_at),
        "finished_at": finished_at,
        "model": spec["model"],
        "fine_tuned_model": fine_tuned_model(session, job) if status == "succeeded" else None,
        "organization_id": workspace.name if workspace else job.workspace_id,
        "status": status,
        "error": error,
        "hyperparameters": {k: hyperparameters[k] for k in ("n_epochs", "batch_size",
                                                            "learning_rate_multiplier")},
        "method": {"type": spec["method"], spec["method"]: {"hyperparameters": hyperparameters}},
        "training_file": spec["training_file"],
        "validation_file": spec["validation_file"],
        "result_files": [],
        "trained_tokens": trained_tokens(session, task) if status == "succeeded" else None,
        "seed": spec["seed"],
        "estimated_finish": None,
        "integrations": [],
        "metadata": spec["metadata"],
        "user_provided_suffix": spec["suffix"],
        # tunelab's: the experiment behind the job, its task's progress and scores.
        "experiment": experiment.name if experiment is not None else None,
        "progress": task.progress if task is not None else None,
        "score": (task.score or {}).get("score") if task is not None else None,
        "base_score": (task.score or {}).get("base_score") if task is not None else None,
        "tunelab_model": task.model if task is not None else None,
        "service": service_name(job),
        "deploy_error": spec.get("deploy_error"),
    }  # fmt: skip


async def list_jobs(request: Request) -> JSONResponse:
    return respond(await run_in_threadpool(_list_jobs, request))


def _list_jobs(request: Request) -> dict[str, Any]:
    wanted = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(FineTuningJob)
            .where(FineTuningJob.workspace_id == workspace_id(request))
            .order_by(FineTuningJob.created_at.desc(), FineTuningJob.id)
        ).all()
        jobs = [
            job_json(session, job)
            for job in rows
            if all((job.spec.get("metadata") or {}).get(k) == v for k, v in wanted.items())
        ]
    return cursor_page(jobs, request.query_params)


def get_job(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        return respond(job_json(session, _find(session, workspace_id(request), _job_id(request))))


def _job_id(request: Request) -> str:
    return str(request.path_params["id"])


def cancel_job(request: Request) -> JSONResponse:
    state = request.app.state
    with state.db.session() as session:
        job = _find(session, workspace_id(request), _job_id(request))
        experiment = session.get(Experiment, job.experiment_id) if job.experiment_id else None
        if experiment is None:
            send = None
        else:
            tasks = experiments.tasks_of(session, experiment)
            try:
                send = lifecycle.cancel_experiment(state.context, session, experiment, tasks)
            except lifecycle.AlreadyEnded:
                raise Conflict(
                    f"Job {job.id} has already {STATUS[experiment.status]}: it cannot be cancelled."
                ) from None
    if send is not None:
        send()
    elif not fail_waiting_job(state.context, job.id, "cancelled", "", state="cancelled"):
        with state.db.session() as session:
            now = _find(session, job.workspace_id, job.id)
            if now.experiment_id is None:  # it ended while it waited
                raise Conflict(
                    f"Job {job.id} has already {now.spec.get('state')}: it cannot be cancelled."
                )
        return cancel_job(request)  # it started meanwhile: cancel its experiment
    with state.db.session() as session:
        return respond(job_json(session, _find(session, workspace_id(request), job.id)))


async def list_events(request: Request) -> JSONResponse:
    return respond(await run_in_threadpool(_list_events, request))


def _list_events(request: Request) -> dict[str, Any]:
    """The job's state changes and its training steps, newest first."""
    state = request.app.state
    with state.db.session() as session:
        job = _find(session, workspace_id(request), _job_id(request))
        task = job_task(session, job)
        records = session.scalars(
            select(EventRecord).where(
                EventRecord.workspace_id == job.workspace_id,
                EventRecord.subject.in_(
                    [f"experiments/{job.id}", f"experiments/{job.id}/tasks/{TASK}"]
                ),
                EventRecord.type.in_(list(EVENT_MESSAGES)),
            )
        ).all()
        events = [_state_event(job, r) for r in records] + _waiting_events(job)
    if task is not None:
        events += [_step_event(job, p) for p in _points(state, task.id)]
    events.sort(key=lambda e: (e["created_at"], e["id"]), reverse=True)
    return cursor_page(events, request.query_params)


def _waiting_events(job: FineTuningJob) -> list[dict[str, Any]]:
    """A job that waited for its files' checks: what it said while it waited."""
    if "waited_for" not in job.spec:
        return []
    said = [
        (job.created_at, "info", f"Validating {field.replace('_', ' ')}: {job.spec[field]}")
        for field in job.spec["waited_for"]
    ]
    finished = job.spec.get("finished_at")
    if finished and job.experiment_id is None:
        error = job.spec.get("error") or {}
        said.append(
            (datetime.fromisoformat(finished), "error", f"The job failed: {error['message']}")
            if job.spec.get("state") == "failed"
            else (datetime.fromisoformat(finished), "info", "The job was cancelled.")
        )
    return [
        {
            "id": f"ftevent-{job.id.removeprefix('ftjob-')}{i}",
            "object": "fine_tuning.job.event",
            "created_at": epoch(when),
            "level": level,
            "message": message,
            "data": {},
            "type": "message",
        }
        for i, (when, level, message) in enumerate(said)
    ]


def _state_event(job: FineTuningJob, record: EventRecord) -> dict[str, Any]:
    level, message = EVENT_MESSAGES[record.type]
    if record.type == "task.failed":
        message = f"{message}: {(record.data.get('error') or {}).get('message', '')}"
    return {
        "id": f"ftevent-{record.id}",
        "object": "fine_tuning.job.event",
        "created_at": epoch(record.time),
        "level": level,
        "message": message,
        "type": "message",
        "data": {"tunelab_event": record.type},
    }


def _points(state: Any, task_id: str) -> list[dict[str, Any]]:
    try:
        raw = state.store.read_bytes(keys.task_file(task_id, "metrics.jsonl"))
    except ObjectNotFound:
        return []
    return [json.loads(line) for line in raw.splitlines() if line]


def _step_event(job: FineTuningJob, point: dict[str, Any]) -> dict[str, Any]:
    data = {
        "step": point["step"],
        "total_steps": point.get("total_steps"),
        "train_loss": point.get("loss"),
        "learning_rate": point.get("learning_rate"),
        "tokens_per_second": point.get("tokens_per_second"),
    }
    if point.get("val_loss") is not None:
        data["valid_loss"] = point["val_loss"]
    if point.get("rewards"):
        data["rewards"] = point["rewards"]
    loss = f"{data['train_loss']:.4f}" if data["train_loss"] is not None else "nan"
    return {
        "id": f"ftevent-{job.id.removeprefix('ftjob-')}-step-{point['step']:08d}",
        "object": "fine_tuning.job.event",
        "created_at": int(point.get("time", 0)),
        "level": "info",
        "message": f"Step {point['step']}/{point.get('total_steps')}: training loss={loss}",
        "type": "metrics",
        "data": data,
    }


async def list_checkpoints(request: Request) -> JSONResponse:
    return respond(await run_in_threadpool(_list_checkpoints, request))


def _list_checkpoints(request: Request) -> dict[str, Any]:
    """The checkpoints training kept (the last few, to resume from) and the final
    model, newest first, each with the metrics of its step. Only the final one is a
    model in the repository, deployable by its `fine_tuned_model_checkpoint` name."""
    state = request.app.state
    with state.db.session() as session:
        job = _find(session, workspace_id(request), _job_id(request))
        task = job_task(session, job)
        final, name = fine_tuned_model(session, job), job_model_name(session, job)
        finished = task.finished_at if task is not None else None
        # The final model holds the weights of the step training selected (`select:
        # best` may pick an earlier one than the last).
        selected = (_registered(session, task).get("selection") or {}).get("step")
    if task is None:
        return cursor_page([], request.query_params, default_limit=10)
    try:
        raw = state.store.read_bytes(keys.task_checkpoints(task.id) + "latest.json")
        steps = list(json.loads(raw)["steps"])
    except ObjectNotFound:
        steps = []
    points = {p["step"]: p for p in _points(state, task.id)}
    last = selected or max(points, default=None)
    if final is not None and last is not None and last not in steps:
        steps.append(last)
    short = job.id.removeprefix("ftjob-")
    checkpoints = []
    for step in sorted(steps, reverse=True):
        point = points.get(step, {})
        is_final = final is not None and step == last
        metrics = {"step": step, "train_loss": point.get("loss")}
        if point.get("val_loss") is not None:
            metrics["valid_loss"] = point["val_loss"]
        created = epoch(finished) if is_final and finished else point.get("time", 0)
        checkpoints.append(
            {
                "id": f"ftckpt-{short}-{step:08d}",
                "object": "fine_tuning.job.checkpoint",
                "created_at": int(created),
                "fine_tuned_model_checkpoint": final if is_final else f"{name}:ckpt-step-{step}",
                "fine_tuning_job_id": job.id,
                "metrics": metrics,
                "step_number": step,
            }
        )
    return cursor_page(checkpoints, request.query_params, default_limit=10)
