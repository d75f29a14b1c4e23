"""Actors of the Kubernetes backend (routed only when TUNELAB_BACKEND=kubernetes)."""

from __future__ import annotations

from sqlalchemy import select

from tunelab.db.tables import Experiment, Task
from tunelab.events.experiment import ExperimentCancelled, TaskScheduled
from tunelab.events.service import ServiceDeleted, ServiceDeployRequested
from tunelab.lifecycle.specs import ExperimentSpec
from tunelab.lifecycle.states import TASK_TERMINAL, TaskState
from tunelab.lifecycle.tasks import fail_task, outcome, scheduled_event
from tunelab.workers.context import current
from tunelab.workers.kube import jobs, servers
from tunelab.workers.kube.client import kube
from tunelab.workers.kube.reconciler import KubeReconciler
from tunelab.workers.registry import subscriber


def job_not_created(event: TaskScheduled, error: str) -> None:
    fail_task(
        current(),
        event.data.task_id,
        "job_not_created",
        f"The task's Kubernetes Job could not be created: {error}"[:2000],
    )


# Retried with back-off for up to about an hour: a busy API server, or a ResourceQuota
# that has room once other work in the namespace finishes.
@subscriber(
    "task.scheduled",
    "cpu",
    on_give_up=job_not_created,
    max_retries=16,
    min_backoff=5_000,
    max_backoff=300_000,
)
def submit_task_job(event: TaskScheduled) -> None:
    """Create the task's Job; a refusal (quota, namespace) fails the task with it."""
    ctx = current()
    with ctx.db.session() as session:
        task = session.get(Task, event.data.task_id)
        experiment = session.get(Experiment, event.data.experiment_id)
        if task is None or experiment is None:
            return
        if task.status in TASK_TERMINAL:
            ctx.bus.publish(outcome(event, task))
            return
        manifest = jobs.job_manifest(ctx.settings, task, experiment)
        namespace = ExperimentSpec.of(experiment).namespace
    refused = jobs.submit(kube(ctx.settings), namespace, manifest)
    if refused:
        fail_task(ctx, event.data.task_id, refused["code"], refused["message"])


@subscriber("experiment.cancelled", "cpu", max_retries=5)
def delete_cancelled_jobs(event: ExperimentCancelled) -> None:
    """Cancel deletes the Jobs (their pods stop) and announces each task's end."""
    ctx = current()
    with ctx.db.session() as session:
        experiment = session.get(Experiment, event.data.experiment_id)
        if experiment is None:
            return
        tasks = list(
            session.scalars(
                select(Task).where(Task.experiment_id == experiment.id, Task.started_at.isnot(None))
            )
        )
        namespace = ExperimentSpec.of(experiment).namespace
        ends = [
            outcome(scheduled_event(t, experiment), t)
            for t in tasks
            if t.status == TaskState.CANCELLED
        ]
        cancelled = [t.id for t in tasks if t.status == TaskState.CANCELLED]
    for task_id in cancelled:
        jobs.delete(kube(ctx.settings), namespace, task_id)
    for end in ends:
        ctx.bus.publish(end)


@subscriber("service.deploy_requested", "cpu", max_retries=5)
def deploy_service_on_kubernetes(event: ServiceDeployRequested) -> None:
    servers.assign(current(), event)
    KubeReconciler.poke_current()


@subscriber("service.deleted", "cpu")
def wake_kube_on_deleted(event: ServiceDeleted) -> None:
    KubeReconciler.poke_current()
