"""The scheduler: queued tasks start, in submission order, as their cluster has room.

It runs whenever tasks are added or finish. Kubernetes does the placing on a real
cluster; this only keeps a cluster's declared inventory from being over-committed, so
that a task waits `queued` instead of starving beside others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from tunelab.clusters import CPU_TYPE, Cluster, clusters
from tunelab.db.models import Experiment, Task
from tunelab.events.envelope import Event, derived_id
from tunelab.events.experiment import (
    ExperimentCancelled,
    ExperimentCreated,
    ExperimentFailed,
    ExperimentFinishedData,
    ExperimentSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskFailedData,
    TaskRef,
    TaskScheduled,
    TaskScheduledData,
    TaskSucceeded,
)
from tunelab.scoring import better
from tunelab.workers.context import WorkerContext, current
from tunelab.workers.registry import subscriber

HOLDING = ("training", "evaluating")
TERMINAL = ("succeeded", "failed", "cancelled")
_local_lock = threading.Lock()


@dataclass
class Usage:
    cpu: float = 0.0
    memory: float = 0.0
    gpus: dict[str, int] = field(default_factory=dict)

    def add(self, task: Task) -> None:
        resources, compute = task.spec["resources"], task.spec["compute"]
        self.cpu += resources["cpu"]["request"]
        self.memory += resources["memory"]["request"]
        if compute["gpu_type"] != CPU_TYPE:
            kind = compute["gpu_type"]
            self.gpus[kind] = self.gpus.get(kind, 0) + compute["gpu_count"]

    def fits(self, cluster: Cluster) -> bool:
        return (
            self.cpu <= float(cluster.cpu)
            and self.memory <= float(cluster.memory)
            and all(n <= cluster.gpus.get(kind, 0) for kind, n in self.gpus.items())
        )


@contextmanager
def scheduling_lock(ctx: WorkerContext, cluster: str) -> Iterator[None]:
    """One scheduler per cluster at a time, across every CPU worker process."""
    client = getattr(ctx.bus.broker, "client", None)
    if client is None:  # a test's StubBroker: one process
        with _local_lock:
            yield
        return
    with client.lock(f"tunelab:schedule:{cluster}", timeout=60, blocking_timeout=60):
        yield


def task_ref(task: Task, experiment: Experiment) -> dict[str, str]:
    return {
        "experiment_id": experiment.id,
        "experiment": experiment.name,
        "task_id": task.id,
        "task": task.name,
    }


def scheduled_event(task: Task, experiment: Experiment) -> TaskScheduled:
    """The task's `task.scheduled`; the same event (and id) whoever builds it again."""
    return TaskScheduled(
        id=derived_id(f"{task.id}/task.scheduled"),
        workspace=task.workspace_id,
        subject=f"experiments/{experiment.name}/tasks/{task.name}",
        data=TaskScheduledData(**task_ref(task, experiment), cluster=task.cluster),
    )


def schedule(ctx: WorkerContext, cluster_name: str) -> list[str]:
    """Start every queued task of the cluster that fits, oldest first; a task that
    does not fit yet holds back the ones behind it, so big tasks are not starved.
    Returns the names of the tasks started."""
    cluster = clusters(ctx.settings).get(cluster_name)
    started = []
    with scheduling_lock(ctx, cluster_name), ctx.db.session() as session:
        usage = Usage()
        for task in session.scalars(
            select(Task).where(Task.cluster == cluster_name, Task.status.in_(HOLDING))
        ):
            usage.add(task)
        queued = session.execute(
            select(Task, Experiment)
            .join(Experiment, Task.experiment_id == Experiment.id)
            .where(Task.cluster == cluster_name, Task.status == "queued")
            .order_by(Experiment.created_at, Experiment.id, Task.position)
            # Locked, and re-read after a concurrent cancel commits: a cancelled task
            # then no longer matches and is not started (PostgreSQL; SQLite writes one
            # at a time anyway).
            .with_for_update(of=Task)
        ).all()
        sends = []
        for task, experiment in queued:
            alone = Usage()
            alone.add(task)
            if cluster is None or not alone.fits(cluster):
                # The operator changed the clusters file since the task was accepted.
                sends.append(_fail_unplaceable(ctx, session, task, experiment, cluster_name))
                continue
            usage.add(task)
            # On Kubernetes the cluster's own scheduler places the pods (and queues those
            # that do not fit yet); this one only keeps count on machines it runs itself.
            if ctx.settings.backend == "local" and not usage.fits(cluster):
                break
            task.status, task.started_at = "training", datetime.now(UTC)
            experiment.status = "running"
            sends.append(ctx.bus.stage(session, scheduled_event(task, experiment)))
            started.append(task.name)
    for send in sends:
        send()
    return started


def _fail_unplaceable(
    ctx: WorkerContext, session: Any, task: Task, experiment: Experiment, cluster: str
) -> Callable[[], None]:
    task.status, task.finished_at = "failed", datetime.now(UTC)
    task.error = {
        "code": "does_not_fit",
        "message": f"Cluster {cluster!r} no longer exists or no longer has the resources "
        "this task asks for; create the experiment again with what it has now.",
    }
    event = TaskFailed(
        id=derived_id(f"{task.id}/task.failed/unplaceable"),
        workspace=task.workspace_id,
        subject=f"experiments/{experiment.name}/tasks/{task.name}",
        data=TaskFailedData(**task_ref(task, experiment), error=task.error),
    )
    return ctx.bus.stage(session, event)


def finish_experiment(ctx: WorkerContext, experiment_id: str) -> None:
    """Once every task has ended: the best task, and the experiment's final state
    (failed only when no task succeeded)."""
    with ctx.db.session() as session:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None or experiment.status in TERMINAL:
            return
        tasks = list(session.scalars(select(Task).where(Task.experiment_id == experiment_id)))
        if any(t.status not in TERMINAL for t in tasks):
            return
        method = experiment.spec["evaluation"]
        best: Task | None = None
        for task in tasks:
            if (
                task.status == "succeeded"
                and (task.score or {}).get("score") is not None
                and (
                    best is None or better(method, task.score["score"], best.score["score"])  # type: ignore[index]
                )
            ):
                best = task
        experiment.finished_at = datetime.now(UTC)
        ref = {"experiment_id": experiment.id, "name": experiment.name}
        event: Event
        if any(t.status == "succeeded" for t in tasks):
            experiment.status, experiment.best_task = "succeeded", best.name if best else None
            event = ExperimentSucceeded(
                id=derived_id(f"{experiment.id}/experiment.finished"),
                workspace=experiment.workspace_id,
                subject=f"experiments/{experiment.name}",
                data=ExperimentFinishedData(
                    **ref, status="succeeded", best_task=experiment.best_task
                ),
            )
        else:
            failed = next((t for t in tasks if t.status == "failed"), None)
            experiment.status = "failed" if failed else "cancelled"
            experiment.error = {
                "code": "no_task_succeeded",
                "message": "No task succeeded"
                + (
                    f"; task {failed.name!r}: {(failed.error or {}).get('message')}"
                    if failed
                    else "."
                ),
            }
            event = ExperimentFailed(
                id=derived_id(f"{experiment.id}/experiment.finished"),
                workspace=experiment.workspace_id,
                subject=f"experiments/{experiment.name}",
                data=ExperimentFinishedData(**ref, status=experiment.status, best_task=None),
            )
        send = ctx.bus.stage(session, event)
    send()


def _cluster_of_experiment(ctx: WorkerContext, experiment_id: str) -> str | None:
    with ctx.db.session() as session:
        experiment = session.get(Experiment, experiment_id)
        return experiment.spec["cluster"] if experiment else None


def _after_task(ref: TaskRef) -> None:
    ctx = current()
    finish_experiment(ctx, ref.experiment_id)
    cluster = _cluster_of_experiment(ctx, ref.experiment_id)
    if cluster is not None:
        schedule(ctx, cluster)


@subscriber("experiment.created", "cpu", max_retries=5)
def schedule_on_created(event: ExperimentCreated) -> None:
    ctx = current()
    cluster = _cluster_of_experiment(ctx, event.data.experiment_id)
    if cluster is not None:
        schedule(ctx, cluster)


@subscriber("experiment.cancelled", "cpu", max_retries=5)
def schedule_on_cancelled(event: ExperimentCancelled) -> None:
    ctx = current()
    cluster = _cluster_of_experiment(ctx, event.data.experiment_id)
    if cluster is not None:
        schedule(ctx, cluster)


@subscriber("task.succeeded", "cpu", max_retries=5)
def finish_on_succeeded(event: TaskSucceeded) -> None:
    _after_task(event.data)


@subscriber("task.failed", "cpu", max_retries=5)
def finish_on_failed(event: TaskFailed) -> None:
    _after_task(event.data)


@subscriber("task.cancelled", "cpu", max_retries=5)
def finish_on_cancelled(event: TaskCancelled) -> None:
    _after_task(event.data)
