"""Training one task inside a Kubernetes Job's pod.

The pod trains exactly as a local GPU worker would (`run_task`: torchrun over the pod's
GPUs, checkpoints, progress and the outcome published as events) and tells the Job how
it ended through its exit code: 0 when the task has its outcome, EXIT_USER_ERROR when
the task failed for its data or parameters (the Job's podFailurePolicy does not retry
that), anything else for a fault worth another pod (which resumes from the checkpoint).
"""

from __future__ import annotations

import logging

from tunelab.db.models import Experiment, Task
from tunelab.events.experiment import TaskFailed
from tunelab.settings import Settings
from tunelab.workers import context
from tunelab.workers.gpu.outcomes import JobCrashed
from tunelab.workers.kube.jobs import EXIT_USER_ERROR

log = logging.getLogger("tunelab.pod")

EXIT_CRASHED = 1


def train_in_pod(settings: Settings, task_id: str) -> int:
    from tunelab.events.broker import build_broker
    from tunelab.workers.setup import install_broker, make_context

    ctx = make_context(settings, install_broker(build_broker(settings)))
    context.install(ctx)
    # Actor modules bind to the broker when imported: only now that it is installed.
    from tunelab.workers.cpu.scheduling import scheduled_event
    from tunelab.workers.gpu.training import run_task

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
