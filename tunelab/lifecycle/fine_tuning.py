"""A fine-tuning job's start, when it waited for its files' checks, and its end: its
OpenAI-named event, and its model deployed when the job asked for it (`deploy`), both
in one transaction, so a redelivery repeats neither."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.context import Context
from tunelab.db.tables import (
    Dataset,
    Experiment,
    FineTuningJob,
    ParameterGroup,
    Service,
    utcnow,
)
from tunelab.errors import Conflict, Invalid, TunelabError
from tunelab.events.envelope import derived_id
from tunelab.events.fine_tuning import (
    FineTuningJobCancelled,
    FineTuningJobFailed,
    FineTuningJobRef,
    FineTuningJobSucceeded,
)
from tunelab.experiment_rules import ExperimentRequest
from tunelab.fine_tuning import JOB_FIELD_OF, job_model_name, job_task, service_name
from tunelab.lifecycle.creation import create, experiment_created
from tunelab.lifecycle.services import request_deploy, stage_deploy
from tunelab.lifecycle.specs import ExperimentSpec
from tunelab.lifecycle.states import ExperimentState, ServiceState
from tunelab.serving_rules import DeployRequest

log = logging.getLogger("tunelab.fine_tuning")

JobEnded = FineTuningJobSucceeded | FineTuningJobFailed | FineTuningJobCancelled

EVENT_OF: dict[str, type[JobEnded]] = {
    ExperimentState.SUCCEEDED: FineTuningJobSucceeded,
    ExperimentState.FAILED: FineTuningJobFailed,
    ExperimentState.CANCELLED: FineTuningJobCancelled,
}


def job_ended(ctx: Context, experiment_id: str) -> None:
    """Announce how the job of this experiment ended (nothing if it is not a job's),
    deploying its model first when it succeeded and asked for it."""
    sends: list[Callable[[], None]] = []
    with ctx.db.session() as session:
        job = session.scalar(
            select(FineTuningJob).where(FineTuningJob.experiment_id == experiment_id)
        )
        experiment = session.get(Experiment, experiment_id)
        if job is None or experiment is None or experiment.status not in EVENT_OF:
            return
        task = job_task(session, job)
        model = task.model if task is not None and experiment.status == "succeeded" else None
        fine_tuned = job_model_name(session, job) if model is not None else None
        service = service_name(job) if model is not None else None
        if service is not None and model is not None:
            taken = session.scalar(
                select(Service).where(
                    Service.workspace_id == job.workspace_id, Service.name == service
                )
            )
            deploy_event = derived_id(f"{job.id}/deploy")
            if taken is not None and taken.model != model:
                message = f"a service named {service!r} serves another model ({taken.model})"
                job.spec = {**job.spec, "deploy_error": {"code": "conflict", "message": message}}
                service = None
            elif taken is not None:
                # A redelivery: this job's deployment was recorded, maybe never sent.
                if taken.status == ServiceState.DEPLOYING and taken.server_id is None:
                    sends.append(stage_deploy(ctx.bus, session, taken, deploy_event))
            else:
                try:
                    with session.begin_nested():
                        _, send = request_deploy(
                            ctx.settings,
                            ctx.bus,
                            session,
                            job.workspace_id,
                            DeployRequest(
                                name=service,
                                model=model,
                                cluster=ExperimentSpec.of(experiment).cluster,
                                namespace=ExperimentSpec.of(experiment).namespace,
                            ),
                            event_id=deploy_event,
                        )
                    sends.append(send)
                except (TunelabError, ValidationError) as exc:
                    # The job succeeded; the deployment it asked for did not start.
                    code = getattr(exc, "code", "invalid")
                    message = getattr(exc, "message", str(exc))
                    log.warning("job %s: its model is not deployed: %s", job.id, message)
                    job.spec = {**job.spec, "deploy_error": {"code": code, "message": message}}
                    service = None
        event = _ended(
            EVENT_OF[experiment.status],
            job,
            experiment_id=experiment_id,
            fine_tuned_model=fine_tuned,
            service=service,
        )
        sends.insert(0, ctx.bus.stage(session, event))
    for send in sends:
        send()


FILE_FIELDS = ("training_file", "validation_file")
WAITING = "validating_files"
"""A job's `spec.state` while it waits for its files' checks, before it has an experiment."""


class _NoLongerWaiting(Exception):
    """The job was cancelled (or started by another delivery) meanwhile."""


def jobs_waiting_for(session: Session, workspace: str, file_id: str) -> list[str]:
    """The jobs of the workspace that wait for the file's checks."""
    return [job.id for job in _waited_on(session, workspace, file_id) if _waiting(job)]


def _waited_on(session: Session, workspace: str, file_id: str) -> list[FineTuningJob]:
    """The workspace's jobs that were asked for while this file was being checked."""
    return [
        job
        for job in session.scalars(
            select(FineTuningJob).where(FineTuningJob.workspace_id == workspace)
        )
        if "waited_for" in job.spec and file_id in (job.spec.get(f) for f in FILE_FIELDS)
    ]


def _waiting(job: FineTuningJob) -> bool:
    return job.experiment_id is None and job.spec.get("state") == WAITING


def start_waiting_jobs(ctx: Context, workspace: str, file_id: str) -> None:
    """The file's checks have ended: each job that waited for them (`validating_files`)
    starts its experiment once all its files are processed, or fails naming the file
    that is not, as OpenAI's jobs do. Delivered again (a worker died after its commit),
    it sends again what that delivery may not have sent."""
    with ctx.db.session() as session:
        jobs = _waited_on(session, workspace, file_id)
        sends = [_resend(ctx, session, job) for job in jobs if not _waiting(job)]
    for send in sends:
        if send is not None:
            send()
    for job in jobs:
        if _waiting(job):
            _start(ctx, job.id)


def _resend(ctx: Context, session: Session, job: FineTuningJob) -> Callable[[], None] | None:
    """What sends a started job's `experiment.created` again while it is queued, or a
    job's end while it waited; None when there is nothing that could have been lost."""
    if job.experiment_id is None:
        return _stage_waiting_end(ctx, session, job)
    experiment = session.get(Experiment, job.experiment_id)
    if experiment is None or experiment.status != ExperimentState.QUEUED:
        return None
    return ctx.bus.stage(session, experiment_created(experiment))


def _start(ctx: Context, job_id: str) -> None:
    with ctx.db.session() as session:
        job = session.get_one(FineTuningJob, job_id)
        problem: tuple[str, str] | None = None
        checking = False
        for field in FILE_FIELDS:
            file_id = job.spec.get(field)
            if file_id is None:
                continue
            dataset = session.scalar(
                select(Dataset).where(
                    Dataset.workspace_id == job.workspace_id, Dataset.name == file_id
                )
            )
            if dataset is None:
                problem = problem or (field, f"file {file_id!r} was deleted")
            elif dataset.status == "failed":
                reason = (dataset.error or {}).get("message", "")
                problem = problem or (field, f"file {file_id!r} is invalid: {reason}")
            elif dataset.status != "ready":
                checking = True
        if problem is None and checking:
            return  # another of its files is still being checked
        workspace, request = job.workspace_id, job.spec["experiment"]
    if problem is not None:
        fail_waiting_job(ctx, job_id, f"invalid_{problem[0]}", problem[1], problem[0])
        return

    def along(session: Session, experiment: Experiment) -> None:
        row = session.get(FineTuningJob, job_id, with_for_update=True)
        if row is None or not _waiting(row):
            raise _NoLongerWaiting
        row.experiment_id = experiment.id
        row.spec = {k: v for k, v in row.spec.items() if k not in ("state", "experiment")}

    try:
        create(ctx, workspace, ExperimentRequest.model_validate(request), along)
    except (_NoLongerWaiting, Conflict):
        return  # cancelled, or started by the delivery of its other file's checks
    except Invalid as exc:
        # Refused as the API refuses it (a file of the wrong kind, say), but only now.
        field = exc.details[0].get("field", "") if exc.details else ""
        message = exc.details[0]["message"] if exc.details else exc.message
        fail_waiting_job(ctx, job_id, "invalid_request", message, JOB_FIELD_OF.get(field))


def fail_waiting_job(
    ctx: Context,
    job_id: str,
    code: str,
    message: str,
    param: str | None = None,
    state: str = "failed",
) -> bool:
    """End a job that has no experiment yet (failed, or cancelled) and announce it;
    False if it was no longer waiting."""
    with ctx.db.session() as session:
        job = session.get(FineTuningJob, job_id, with_for_update=True)
        if job is None or not _waiting(job):
            return False
        ended: dict[str, Any] = {"state": state, "finished_at": utcnow().isoformat()}
        if state == "failed":
            ended["error"] = {"code": code, "message": message, "param": param}
        job.spec = {k: v for k, v in job.spec.items() if k != "experiment"} | ended
        # Its parameter group goes with it, as with a job refused at once.
        session.query(ParameterGroup).filter_by(workspace_id=job.workspace_id, name=job.id).delete()
        send = _stage_waiting_end(ctx, session, job)
    if send is not None:
        send()
    return True


def _stage_waiting_end(
    ctx: Context, session: Session, job: FineTuningJob
) -> Callable[[], None] | None:
    ends: dict[str, type[JobEnded]] = {
        "failed": FineTuningJobFailed,
        "cancelled": FineTuningJobCancelled,
    }
    kind = ends.get(job.spec.get("state", ""))
    return ctx.bus.stage(session, _ended(kind, job)) if kind is not None else None


def _ended(kind: type[JobEnded], job: FineTuningJob, **data: Any) -> JobEnded:
    """The job's end under OpenAI's name: one per job (its id derived from the job's),
    whether it ended with its experiment or while it waited for its files."""
    return kind(
        id=derived_id(f"{job.id}/fine_tuning.job.ended"),
        workspace=job.workspace_id,
        subject=f"fine_tuning/jobs/{job.id}",
        data=FineTuningJobRef(id=job.id, **data),
    )
