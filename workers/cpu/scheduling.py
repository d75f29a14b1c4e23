"""The scheduler's actors: whenever tasks are added or end, the experiment's cluster is
looked at again (tunelab.lifecycle.experiments.schedule), and an experiment whose tasks
have all ended is finished."""

from __future__ import annotations

from tunelab.context import Context
from tunelab.db.tables import Experiment
from tunelab.events.experiment import (
    ExperimentCancelled,
    ExperimentCreated,
    TaskCancelled,
    TaskFailed,
    TaskRef,
    TaskSucceeded,
)
from tunelab.lifecycle.experiments import finish_experiment, schedule
from tunelab.lifecycle.searches import continue_searches
from tunelab.lifecycle.specs import ExperimentSpec
from tunelab.workers.context import current
from tunelab.workers.registry import subscriber


def _cluster_of_experiment(ctx: Context, experiment_id: str) -> str | None:
    with ctx.db.session() as session:
        experiment = session.get(Experiment, experiment_id)
        return ExperimentSpec.of(experiment).cluster if experiment else None


def _schedule_for(ctx: Context, experiment_id: str) -> None:
    cluster = _cluster_of_experiment(ctx, experiment_id)
    if cluster is not None:
        schedule(ctx, cluster)


def _after_task(ref: TaskRef) -> None:
    ctx = current()
    continue_searches(ctx, ref.experiment_id)  # before finishing: more trials may come
    finish_experiment(ctx, ref.experiment_id)
    _schedule_for(ctx, ref.experiment_id)


@subscriber("experiment.created", "cpu", max_retries=5)
def schedule_on_created(event: ExperimentCreated) -> None:
    _schedule_for(current(), event.data.experiment_id)


@subscriber("experiment.cancelled", "cpu", max_retries=5)
def schedule_on_cancelled(event: ExperimentCancelled) -> None:
    _schedule_for(current(), event.data.experiment_id)


@subscriber("task.succeeded", "cpu", max_retries=5)
def finish_on_succeeded(event: TaskSucceeded) -> None:
    _after_task(event.data)


@subscriber("task.failed", "cpu", max_retries=5)
def finish_on_failed(event: TaskFailed) -> None:
    _after_task(event.data)


@subscriber("task.cancelled", "cpu", max_retries=5)
def finish_on_cancelled(event: TaskCancelled) -> None:
    _after_task(event.data)
