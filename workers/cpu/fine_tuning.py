"""A job of OpenAI's fine-tuning API: started once its files' checks end, when it
waited for them; its end announced under OpenAI's names, and its model deployed when
the job asked for it."""

from __future__ import annotations

from tunelab.events.dataset import DatasetFailed, DatasetValidated
from tunelab.events.experiment import ExperimentCancelled, ExperimentFailed, ExperimentSucceeded
from tunelab.lifecycle.fine_tuning import job_ended, start_waiting_jobs
from tunelab.workers.context import current
from tunelab.workers.registry import subscriber


@subscriber("experiment.succeeded", "cpu", max_retries=5)
def follow_job_on_succeeded(event: ExperimentSucceeded) -> None:
    job_ended(current(), event.data.experiment_id)


@subscriber("experiment.failed", "cpu", max_retries=5)
def follow_job_on_failed(event: ExperimentFailed) -> None:
    job_ended(current(), event.data.experiment_id)


@subscriber("experiment.cancelled", "cpu", max_retries=5)
def follow_job_on_cancelled(event: ExperimentCancelled) -> None:
    job_ended(current(), event.data.experiment_id)


@subscriber("dataset.validated", "cpu", max_retries=5)
def start_jobs_on_validated(event: DatasetValidated) -> None:
    _checked(event)


@subscriber("dataset.failed", "cpu", max_retries=5)
def start_jobs_on_failed(event: DatasetFailed) -> None:
    _checked(event)


def _checked(event: DatasetValidated | DatasetFailed) -> None:
    assert event.workspace is not None, "a dataset's events name its workspace"
    start_waiting_jobs(current(), event.workspace, event.data.name)
