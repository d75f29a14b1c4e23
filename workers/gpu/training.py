"""The training actor: `task.scheduled` in; progress, then `task.succeeded`, `.failed` or
`.cancelled` out, with the fine-tuned model registered in the repository."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dramatiq.middleware import TimeLimitExceeded

from tunelab.clusters import CPU_TYPE
from tunelab.db.models import Experiment, Task
from tunelab.events.envelope import Event
from tunelab.events.experiment import TaskScheduled
from tunelab.settings import get_settings
from tunelab.store import keys
from tunelab.workers.context import WorkerContext, current
from tunelab.workers.gpu.launch import JobProcess, job_command
from tunelab.workers.gpu.lease import TaskLease
from tunelab.workers.gpu.outcomes import TERMINAL, JobCrashed, finish, outcome, register_model
from tunelab.workers.gpu.relay import Run
from tunelab.workers.registry import subscriber


def job_spec(ctx: WorkerContext, task: Task, experiment: Experiment) -> dict[str, Any]:
    files = task.spec["files"]
    return {
        "task_id": task.id,
        "base_model_uri": task.spec["base_model_uri"],
        "train_uri": files["train"],
        "eval_uri": files.get("validate"),
        "evaluation": experiment.spec["evaluation"],
        "params": task.spec["parameters"],
        "prefix": keys.task_prefix(task.id),
        "model_prefix": keys.model_prefix(task.id),
        "cpu_threads": max(1, int(task.spec["resources"]["cpu"]["request"]) // processes(task)),
    }


def processes(task: Task) -> int:
    return max(1, int(task.spec["compute"]["gpu_count"]))


def run_task(ctx: WorkerContext, event: TaskScheduled) -> Event | None:
    """Train the task (resuming if an earlier attempt checkpointed); its outcome event,
    or None when there is nothing to announce. Raises JobCrashed for a retry."""
    with ctx.db.session() as session:
        task = session.get(Task, event.data.task_id)
        experiment = session.get(Experiment, event.data.experiment_id)
        if task is None or experiment is None:
            return None
        if task.status in TERMINAL:
            return outcome(ctx, event, task)  # a redelivery after the work was done
        spec = job_spec(ctx, task, experiment)
        count = processes(task)
        task_gpu_type = task.spec["compute"]["gpu_type"]
        run = Run(ctx, event, task)
    lease = TaskLease(getattr(ctx.bus.broker, "client", None), event.data.task_id)
    if not lease.acquire():
        return None  # a duplicate delivery: a live job has the task and will announce it
    try:
        return _train(ctx, event, run, spec, count, task_gpu_type, lease)
    finally:
        lease.release()


def _train(
    ctx: WorkerContext,
    event: TaskScheduled,
    run: Run,
    spec: dict[str, Any],
    count: int,
    task_gpu_type: str,
    lease: TaskLease,
) -> Event | None:
    run.note(f"attempt on {os.uname().nodename} with {count} process(es)")
    with tempfile.TemporaryDirectory(prefix="tunelab-task-") as tmp:
        spec_path = Path(tmp) / "job.json"
        spec_path.write_text(json.dumps(spec))
        job = JobProcess(
            job_command(spec_path, count), Path(tmp) / "job.log", _env(count, task_gpu_type)
        )
        try:
            for message in job.messages(poll_s=1.0):
                if message is not None:
                    run.handle(message)
                lease.renew()
                if run.cancelled():
                    run.note("cancel requested: stopping")
                    job.stop()
                run.flush(job.log_path)
            code = job.wait()
        finally:
            job.kill()
        run.publish_progress()
        run.flush(job.log_path, force=True)
        tail = job.log_path.read_text("utf-8", "replace").splitlines()[-5:]
    if run.cancelled():
        return finish(ctx, event, "cancelled", None)
    if code == 0 and run.result is not None:
        return register_model(ctx, event, run.result)
    # torchrun exits 1 whatever its ranks exited with: the job's own error message is
    # what tells a user error from a fault.
    if run.error is not None:
        return finish(ctx, event, "failed", run.error)
    raise JobCrashed(f"training process exited with {code}: " + " | ".join(tail))


def _env(processes: int, gpu_type: str) -> dict[str, str]:
    env = dict(os.environ)
    if gpu_type == CPU_TYPE:
        env["CUDA_VISIBLE_DEVICES"] = ""  # asked for no GPU, and not counted on one
    # DeepSpeed compiles its C++ ops on first use (minutes on a CPU): keep them.
    env.setdefault(
        "TORCH_EXTENSIONS_DIR", str(get_settings().model_cache_dir.parent / "torch_extensions")
    )
    if processes > 1:
        # Each rank gets its share of the cores; contention costs more than it gives.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return env


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
    ctx.bus.publish(finish(ctx, event, "failed", reason))


@subscriber(
    "task.scheduled",
    "train",
    on_give_up=give_up,
    max_retries=2,
    min_backoff=5_000,
    # A limit of its own: Dramatiq's 10-minute default would kill any real training.
    time_limit=get_settings().train_time_limit_s * 1000,
    throws=(TimeLimitExceeded,),  # another try would only run into it again
)
def train_task(event: TaskScheduled) -> None:
    ctx = current()
    result = run_task(ctx, event)
    if result is not None:
        ctx.bus.publish(result)
