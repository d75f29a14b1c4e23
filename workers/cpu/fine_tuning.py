"""The end of a job of OpenAI's fine-tuning API: announced under OpenAI's names, and its
model deployed when the job asked for it."""

from __future__ import annotations

from tunelab.events.experiment import ExperimentCancelled, ExperimentFailed, ExperimentSucceeded
from tunelab.lifecycle.fine_tuning import job_ended
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
