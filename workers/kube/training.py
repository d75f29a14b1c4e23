"""Turning Jobs' states into task events: what Kubernetes knows and the pod could not
say itself (it never started, it was refused, it kept crashing, it ran out of time, its
Job vanished)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from tunelab.context import Context
from tunelab.db.tables import Task
from tunelab.lifecycle.states import TASK_TERMINAL, TaskState
from tunelab.lifecycle.tasks import fail_task
from tunelab.training.exits import EXIT_USER_ERROR
from tunelab.workers.kube.client import MANAGED_SELECTOR, Kube, meta
from tunelab.workers.kube.jobs import delete, job_name
from tunelab.workers.kube.reasons import quota_event, stuck_pod

log = logging.getLogger("tunelab.kube")

TRAINING_SELECTOR = f"{MANAGED_SELECTOR},app.kubernetes.io/component=training"
MISSING_AFTER = timedelta(minutes=10)
"""A training task with no Job this long after it was scheduled has lost it (deleted by
hand, or its creation kept failing): it fails instead of waiting forever."""


def job_trouble(job: Any, pods: list[Any], events: list[Any]) -> tuple[str, str] | None:
    """Why the Job's task cannot succeed, as (code, message); None while it may."""
    for condition in job.status.conditions or []:
        if condition.status != "True":
            continue
        if condition.type == "Failed" and condition.reason == "DeadlineExceeded":
            return "time_limit", "Training ran past its time limit and was stopped."
        if condition.type == "Failed":
            last = _last_termination(pods)
            attempts = (job.spec.backoff_limit or 0) + 1
            return (
                "training_crashed",
                f"Training failed on every one of its {attempts} attempt(s)"
                + (f"; the last ended with {last}" if last else "")
                + ". Its log has the details.",
            )
        if condition.type == "Complete":  # the pod publishes its outcome before it exits
            return "no_outcome", "The training pod ended without reporting an outcome."
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
    """A pod ended with EXIT_USER_ERROR: the task failed for its data or parameters, and
    a server without podFailurePolicy would start another pod for nothing."""
    for pod in pods:
        for status in pod.status.container_statuses or []:
            ended = status.state.terminated if status.state else None
            if ended and ended.exit_code == EXIT_USER_ERROR:
                return True
    return False


def reconcile_job(ctx: Context, kube: Kube, job: Any) -> None:
    name, namespace, labels = meta(job)
    task_id = labels.get("tunelab.io/task-id", "")
    with ctx.db.session() as session:
        task = session.get(Task, task_id)
        status = task.status if task else None
    if status is None or status == TaskState.CANCELLED:
        delete(kube, namespace, task_id)  # nothing left to train it for
        return
    if status in TASK_TERMINAL:
        return
    pods = kube.core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    if user_error_exit(pods):
        # The pod failed the task with its reason before exiting; this is the fallback.
        fail_task(ctx, task_id, "invalid_task", "Training stopped on an error in the task.")
        delete(kube, namespace, task_id)
        return
    events = kube.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    ).items
    trouble = job_trouble(job, pods, events)
    if trouble:
        log.info("task %s fails: %s", task_id, trouble[1])
        fail_task(ctx, task_id, *trouble)
        delete(kube, namespace, task_id)


def reconcile_jobs(ctx: Context, kube: Kube) -> None:
    jobs = kube.batch.list_job_for_all_namespaces(label_selector=TRAINING_SELECTOR).items
    for job in jobs:
        try:
            reconcile_job(ctx, kube, job)
        except Exception:  # one namespace's trouble must not stop the others
            log.exception("reconciling Job %s failed", meta(job)[0])
    fail_tasks_without_jobs(ctx, {meta(job)[0] for job in jobs})


def fail_tasks_without_jobs(ctx: Context, job_names: set[str]) -> None:
    cutoff = datetime.now(UTC) - MISSING_AFTER
    with ctx.db.session() as session:
        lost = [
            task.id
            for task in session.scalars(select(Task).where(Task.status == TaskState.TRAINING))
            if job_name(task.id) not in job_names
            and task.started_at is not None
            and task.started_at.replace(tzinfo=task.started_at.tzinfo or UTC) < cutoff
        ]
    for task_id in lost:
        fail_task(
            ctx,
            task_id,
            "job_missing",
            "The task's Kubernetes Job is gone (deleted, or never created) before training "
            "finished.",
        )
