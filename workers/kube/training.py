"""Turning Jobs' states into task events: what Kubernetes knows and the pod could not
say itself (it never started, it was refused, it kept crashing, it ran out of time)."""

from __future__ import annotations

import logging
from typing import Any

from tunelab.db.models import Experiment, Task
from tunelab.workers.context import WorkerContext
from tunelab.workers.cpu.scheduling import scheduled_event
from tunelab.workers.gpu.outcomes import TERMINAL, finish
from tunelab.workers.kube.client import MANAGED_SELECTOR, Kube
from tunelab.workers.kube.jobs import EXIT_USER_ERROR, delete
from tunelab.workers.kube.reasons import quota_event, stuck_pod

log = logging.getLogger("tunelab.kube")

TRAINING_SELECTOR = f"{MANAGED_SELECTOR},app.kubernetes.io/component=training"


def fail_task(ctx: WorkerContext, task_id: str, code: str, message: str) -> None:
    """End the task `failed` with the reason, and announce it (once)."""
    with ctx.db.session() as session:
        task = session.get(Task, task_id)
        experiment = session.get(Experiment, task.experiment_id) if task else None
        if task is None or experiment is None or task.status in TERMINAL:
            return
        event = scheduled_event(task, experiment)
    ctx.bus.publish(finish(ctx, event, "failed", {"code": code, "message": message}))


def job_trouble(job: Any, pods: list[Any], events: list[Any]) -> tuple[str, str] | None:
    """Why the Job's task cannot succeed, as (code, message); None while it may."""
    for condition in job.status.conditions or []:
        if condition.type == "Failed" and condition.status == "True":
            if condition.reason == "DeadlineExceeded":
                return "time_limit", "Training ran past its time limit and was stopped."
            last = _last_termination(pods)
            attempts = (job.spec.backoff_limit or 0) + 1
            return (
                "training_crashed",
                f"Training failed on every one of its {attempts} attempt(s)"
                + (f"; the last ended with {last}" if last else "")
                + ". Its log has the details.",
            )
    for pod in pods:
        stuck = stuck_pod(pod)
        if stuck:
            return "pod_cannot_start", f"The training pod cannot start: {stuck}."
    if not pods:
        refused = quota_event(events)
        if refused:
            return "quota_exceeded", f"Kubernetes will not create the training pod: {refused}"
    return None


def _last_termination(pods: list[Any]) -> str | None:
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp, reverse=True):
        for status in pod.status.container_statuses or []:
            ended = status.state.terminated if status.state else None
            if ended:
                return f"exit code {ended.exit_code} ({ended.reason or 'Error'})"
    return None


def user_error_exit(pods: list[Any]) -> bool:
    """A pod ended with EXIT_USER_ERROR: the task already failed with its reason, and a
    server without podFailurePolicy would start another pod for nothing."""
    for pod in pods:
        for status in pod.status.container_statuses or []:
            ended = status.state.terminated if status.state else None
            if ended and ended.exit_code == EXIT_USER_ERROR:
                return True
    return False


def reconcile_jobs(ctx: WorkerContext, kube: Kube) -> None:
    jobs = kube.batch.list_job_for_all_namespaces(label_selector=TRAINING_SELECTOR).items
    for job in jobs:
        task_id = job.metadata.labels.get("tunelab.io/task-id", "")
        namespace = job.metadata.namespace
        with ctx.db.session() as session:
            task = session.get(Task, task_id)
            status = task.status if task else None
        if status is None or status == "cancelled":
            delete(kube, namespace, task_id)  # nothing left to train it for
            continue
        if status in TERMINAL:
            continue
        pods = kube.core.list_namespaced_pod(
            namespace, label_selector=f"job-name={job.metadata.name}"
        ).items
        if user_error_exit(pods):
            delete(kube, namespace, task_id)
            continue
        events = kube.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={job.metadata.name}"
        ).items
        trouble = job_trouble(job, pods, events)
        if trouble:
            log.info("task %s fails: %s", task_id, trouble[1])
            fail_task(ctx, task_id, *trouble)
            delete(kube, namespace, task_id)
