"""The end of a job asked for through OpenAI's fine-tuning API, under OpenAI's event
names, for webhooks that already listen for them (beside tunelab's experiment.*)."""

from __future__ import annotations

from typing import Literal

from tunelab.events.envelope import Event, Payload


class FineTuningJobRef(Payload):
    id: str
    """The job's id (`ftjob-...`), OpenAI's `data.id`."""
    experiment_id: str | None = None
    """None for a job that ended before its files' checks gave it an experiment."""
    fine_tuned_model: str | None = None
    service: str | None = None
    """The service deploying the model, when the job asked for one."""


class FineTuningJobSucceeded(Event):
    type: Literal["fine_tuning.job.succeeded"] = "fine_tuning.job.succeeded"
    data: FineTuningJobRef


class FineTuningJobFailed(Event):
    type: Literal["fine_tuning.job.failed"] = "fine_tuning.job.failed"
    data: FineTuningJobRef


class FineTuningJobCancelled(Event):
    type: Literal["fine_tuning.job.cancelled"] = "fine_tuning.job.cancelled"
    data: FineTuningJobRef
