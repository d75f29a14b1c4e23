"""The training actor: `task.scheduled` in; progress, then `task.succeeded`, `.failed` or
`.cancelled` out, with the fine-tuned model registered in the repository (the work is
tunelab.training.runner's, the same a Kubernetes training pod runs)."""

from __future__ import annotations

from dramatiq.middleware import TimeLimitExceeded

from tunelab.events.experiment import TaskScheduled
from tunelab.lifecycle.states import TaskState
from tunelab.lifecycle.tasks import finish
from tunelab.training.runner import run_task
from tunelab.workers.context import current
from tunelab.workers.registry import subscriber


def give_up(event: TaskScheduled, error: str) -> None:
    """After the last retry (or the time limit) the task fails visibly instead of
    staying `training`."""
    ctx = current()
    if "TimeLimitExceeded" in error:
        reason = {
            "code": "time_limit",
            "message": f"Training ran past the limit of {ctx.settings.train_time_limit_s} s "
            "(TUNELAB_TRAIN_TIME_LIMIT_S); lower epochs or raise the limit.",
        }
    else:
        reason = {
            "code": "training_crashed",
            "message": f"The training process kept failing; its log has the details: {error}",
        }
    ctx.bus.publish(finish(ctx, event, TaskState.FAILED, reason))


@subscriber(
    "task.scheduled",
    "train",
    on_give_up=give_up,
    max_retries=2,
    min_backoff=5_000,
    # A limit of its own: Dramatiq's 10-minute default would kill any real training.
    options_from=lambda settings: {"time_limit": settings.train_time_limit_s * 1000},
    throws=(TimeLimitExceeded,),  # another try would only run into it again
)
def train_task(event: TaskScheduled) -> None:
    ctx = current()
    result = run_task(ctx, event)
    if result is not None:
        ctx.bus.publish(result)
