"""An experiment's life: its queued tasks start as their cluster has room (the
scheduler), it ends once every task has (with its best task), or it is cancelled.

The scheduler runs whenever tasks are added or finish. Kubernetes does the placing on a
real cluster; this only keeps a cluster's declared inventory from being over-committed,
so that a task waits `queued` instead of starving beside others.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.clusters import CPU_TYPE, Cluster, clusters
from tunelab.context import Context
from tunelab.db.tables import Experiment, Task
from tunelab.events.envelope import Event, derived_id
from tunelab.events.experiment import (
    ExperimentCancelled,
    ExperimentFailed,
    ExperimentFinishedData,
    ExperimentRef,
    ExperimentSucceeded,
    TaskFailed,
    TaskFailedData,
)
from tunelab.lifecycle.specs import ExperimentSpec, TaskNeeds, Trial
from tunelab.lifecycle.states import (
    EXPERIMENT_ACTIVE,
    EXPERIMENT_TERMINAL,
    TASK_HOLDING,
    TASK_TERMINAL,
    ExperimentState,
    TaskState,
)
from tunelab.lifecycle.tasks import scheduled_event, task_ref
from tunelab.scoring import better

_local_lock = threading.Lock()


@dataclass
class Usage:
    cpu: float = 0.0
    memory: float = 0.0
    gpus: dict[str, int] = field(default_factory=dict)

    def add(self, task: Task) -> None:
        spec = TaskNeeds.of(task)
        self.cpu += spec.resources.cpu.values()[0]
        self.memory += spec.resources.memory.values()[0]
        if spec.compute.gpu_type != CPU_TYPE:
            kind = spec.compute.gpu_type
            self.gpus[kind] = self.gpus.get(kind, 0) + spec.compute.gpu_count

    def fits(self, cluster: Cluster) -> bool:
        return (
            self.cpu <= float(cluster.cpu)
            and self.memory <= float(cluster.memory)
            and all(n <= cluster.gpus.get(kind, 0) for kind, n in self.gpus.items())
        )


@contextmanager
def scheduling_lock(ctx: Context, cluster: str) -> Iterator[None]:
    """One scheduler per cluster at a time, across every CPU worker process."""
    client = ctx.bus.redis
    if client is None:  # a test's StubBroker: one process
        with _local_lock:
            yield
        return
    with client.lock(f"tunelab:schedule:{cluster}", timeout=60, blocking_timeout=60):
        yield


def schedule(ctx: Context, cluster_name: str) -> list[str]:
    """Start every queued task of the cluster that fits, oldest first; a task that
    does not fit yet holds back the ones behind it, so big tasks are not starved.
    Returns the names of the tasks started."""
    cluster = clusters(ctx.settings).get(cluster_name)
    started = []
    with scheduling_lock(ctx, cluster_name), ctx.db.session() as session:
        usage = Usage()
        searching: Counter[tuple[str, str]] = Counter()  # running trials per search
        for task in session.scalars(
            select(Task).where(Task.cluster == cluster_name, Task.status.in_(TASK_HOLDING))
        ):
            usage.add(task)
            searching.update(_search_of(task))
        queued = session.execute(
            select(Task, Experiment)
            .join(Experiment, Task.experiment_id == Experiment.id)
            .where(Task.cluster == cluster_name, Task.status == TaskState.QUEUED)
            .order_by(Experiment.created_at, Experiment.id, Task.position)
            # Locked, and re-read after a concurrent cancel commits: a cancelled task
            # then no longer matches and is not started (PostgreSQL; SQLite writes one
            # at a time anyway).
            .with_for_update(of=Task)
        ).all()
        sends = []
        for task, experiment in queued:
            trial = TaskNeeds.of(task).trial
            if trial is not None and searching[_search_key(task, trial)] >= trial.parallel:
                continue  # its search runs all the trials it may; the others need not wait
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
            searching.update(_search_of(task))
            task.status, task.started_at = TaskState.TRAINING, datetime.now(UTC)
            experiment.status = ExperimentState.RUNNING
            sends.append(ctx.bus.stage(session, scheduled_event(task, experiment)))
            started.append(task.name)
    for send in sends:
        send()
    return started


def _search_key(task: Task, trial: Trial) -> tuple[str, str]:
    return (task.experiment_id, trial.search)


def _search_of(task: Task) -> list[tuple[str, str]]:
    """The search the task is a trial of, as a list to count (empty for a plain task)."""
    trial = TaskNeeds.of(task).trial
    return [_search_key(task, trial)] if trial is not None else []


def _fail_unplaceable(
    ctx: Context, session: Any, task: Task, experiment: Experiment, cluster: str
) -> Callable[[], None]:
    task.status, task.finished_at = TaskState.FAILED, datetime.now(UTC)
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


def finish_experiment(ctx: Context, experiment_id: str) -> None:
    """Once every task has ended: the best task, and the experiment's final state
    (failed only when no task succeeded)."""
    with ctx.db.session() as session:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None or experiment.status in EXPERIMENT_TERMINAL:
            return
        tasks = list(session.scalars(select(Task).where(Task.experiment_id == experiment_id)))
        if any(t.status not in TASK_TERMINAL for t in tasks):
            return
        method = ExperimentSpec.of(experiment).evaluation
        best: Task | None = None
        for task in tasks:
            if (
                task.status == TaskState.SUCCEEDED
                and (task.score or {}).get("score") is not None
                and (
                    best is None
                    # A task's own method ranks it (a DPO task's is preference accuracy).
                    or better(
                        (task.score.get("details") or {}).get("method", method),  # type: ignore[union-attr]
                        task.score["score"],  # type: ignore[index]
                        best.score["score"],  # type: ignore[index]
                    )
                )
            ):
                best = task
        experiment.finished_at = datetime.now(UTC)
        ref = {"experiment_id": experiment.id, "name": experiment.name}
        event: Event
        if any(t.status == TaskState.SUCCEEDED for t in tasks):
            experiment.status = ExperimentState.SUCCEEDED
            experiment.best_task = best.name if best else None
            event = ExperimentSucceeded(
                id=derived_id(f"{experiment.id}/experiment.finished"),
                workspace=experiment.workspace_id,
                subject=f"experiments/{experiment.name}",
                data=ExperimentFinishedData(
                    **ref, status=ExperimentState.SUCCEEDED, best_task=experiment.best_task
                ),
            )
        else:
            failed = next((t for t in tasks if t.status == TaskState.FAILED), None)
            experiment.status = ExperimentState.FAILED if failed else ExperimentState.CANCELLED
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


class AlreadyEnded(ValueError):
    """The experiment has ended: there is nothing to cancel."""


def cancel_experiment(
    ctx: Context, session: Session, experiment: Experiment, tasks: list[Task]
) -> Callable[[], None]:
    """Cancel the experiment and its unfinished tasks in the caller's transaction (queued
    ones at once; a training task's worker sees the state and stops within seconds);
    returns what announces it, to be called once that transaction has committed.
    Raises AlreadyEnded."""
    # Under the experiment's row lock, as a search adds its trials: a trial added
    # meanwhile is among `tasks`, read again after the lock.
    session.refresh(experiment, with_for_update=True)
    for task in tasks:
        session.refresh(task)
    tasks += [
        t
        for t in session.scalars(select(Task).where(Task.experiment_id == experiment.id))
        if t not in tasks
    ]
    if experiment.status in EXPERIMENT_TERMINAL:
        raise AlreadyEnded(f"Experiment {experiment.name!r} has already {experiment.status}.")
    now = datetime.now(UTC)
    for task in tasks:
        if task.status not in TASK_TERMINAL:
            task.status, task.finished_at = TaskState.CANCELLED, now
    experiment.status, experiment.finished_at = ExperimentState.CANCELLED, now
    return ctx.bus.stage(
        session,
        ExperimentCancelled(
            id=derived_id(f"{experiment.id}/experiment.cancelled"),
            workspace=experiment.workspace_id,
            subject=f"experiments/{experiment.name}",
            data=ExperimentRef(experiment_id=experiment.id, name=experiment.name),
        ),
    )


def active_users(
    session: Session, workspace: str, *, dataset: str | None = None, group: str | None = None
) -> list[str]:
    """The experiments still queued or running with a task that trains (or validates)
    on `dataset` or with parameter group `group`: what must not be deleted under them."""
    return [
        experiment.name
        for experiment in session.scalars(
            select(Experiment).where(
                Experiment.workspace_id == workspace, Experiment.status.in_(EXPERIMENT_ACTIVE)
            )
        )
        if any(
            (dataset is not None and dataset in (t.dataset, t.validation_dataset))
            or (group is not None and t.parameter_group == group)
            for t in ExperimentSpec.of(experiment).tasks
        )
    ]
