"""A fine-tuning job's end: its OpenAI-named event, and its model deployed when the job
asked for it (`deploy`), both in one transaction, so a redelivery repeats neither."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy import select

from tunelab.context import Context
from tunelab.db.tables import Experiment, FineTuningJob, Service
from tunelab.errors import TunelabError
from tunelab.events.envelope import derived_id
from tunelab.events.fine_tuning import (
    FineTuningJobCancelled,
    FineTuningJobFailed,
    FineTuningJobRef,
    FineTuningJobSucceeded,
)
from tunelab.fine_tuning import job_model_name, job_task, service_name
from tunelab.lifecycle.services import request_deploy, stage_deploy
from tunelab.lifecycle.specs import ExperimentSpec
from tunelab.lifecycle.states import ExperimentState, ServiceState
from tunelab.serving_rules import DeployRequest

log = logging.getLogger("tunelab.fine_tuning")

EVENT_OF: dict[str, type[FineTuningJobSucceeded | FineTuningJobFailed | FineTuningJobCancelled]] = {
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
        event = EVENT_OF[experiment.status](
            id=derived_id(f"{job.id}/fine_tuning.job.ended"),
            workspace=job.workspace_id,
            subject=f"fine_tuning/jobs/{job.id}",
            data=FineTuningJobRef(
                id=job.id,
                experiment_id=experiment_id,
                fine_tuned_model=fine_tuned,
                service=service,
            ),
        )
        sends.insert(0, ctx.bus.stage(session, event))
    for send in sends:
        send()
