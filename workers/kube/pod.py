"""Training one task inside a Kubernetes Job's pod.

The pod trains exactly as a local GPU worker would (tunelab.training.runner: torchrun over
the pod's GPUs, checkpoints, progress and the outcome published as events) and tells the
Job how
it ended through its exit code: 0 when the task has its outcome, EXIT_USER_ERROR when
the task failed for its data or parameters (the Job's podFailurePolicy does not retry
that), anything else for a fault worth another pod (which resumes from the checkpoint).
"""

from __future__ import annotations

import logging

from tunelab.context import open_context
from tunelab.db.tables import Experiment, Task
from tunelab.events.broker import build_broker
from tunelab.events.experiment import TaskFailed
from tunelab.lifecycle.tasks import scheduled_event
from tunelab.settings import Settings
from tunelab.training.exits import EXIT_CRASHED, EXIT_USER_ERROR
from tunelab.training.runner import JobCrashed, run_task

log = logging.getLogger("tunelab.pod")


def train_in_pod(settings: Settings, task_id: str) -> int:
    # No actor runs here: the broker only publishes the task's events.
    ctx = open_context(settings, build_broker(settings))

    with ctx.db.session() as session:
        task = session.get(Task, task_id)
        experiment = session.get(Experiment, task.experiment_id) if task else None
        if task is None or experiment is None:
            log.error("no task %s in the database this pod was given", task_id)
            return EXIT_USER_ERROR
        event = scheduled_event(task, experiment)
    try:
        result = run_task(ctx, event)
    except JobCrashed:
        log.exception("training crashed; the Job starts another pod, which resumes")
        return EXIT_CRASHED
    if result is None:
        # Another pod holds the task's lease (a duplicate): this one did nothing, and
        # exiting 0 would tell the Job the task is done.
        log.error("task %s is held by another live job; not training it here", task_id)
        return EXIT_CRASHED
    ctx.bus.publish(result)
    return EXIT_USER_ERROR if isinstance(result, TaskFailed) else 0
