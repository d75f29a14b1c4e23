"""Training one task: its job in processes of its own (torchrun over several), its
messages relayed into progress and logs, its outcome decided, the fine-tuned model
registered. The local GPU worker's training actor and a Kubernetes training pod run
exactly this; only who calls it differs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tunelab.clusters import CPU_TYPE
from tunelab.context import Context
from tunelab.db.tables import Experiment, Task
from tunelab.events.envelope import Event
from tunelab.events.experiment import TaskScheduled, TaskSucceeded
from tunelab.lease import Lease
from tunelab.lifecycle.specs import TaskSpec
from tunelab.lifecycle.states import TASK_TERMINAL, TaskState
from tunelab.lifecycle.tasks import TaskGone, finish, outcome, register_model
from tunelab.training.launch import JobProcess, job_command
from tunelab.training.reporting import Run


class JobCrashed(RuntimeError):
    """The job process died of a fault worth a retry (it resumes from its checkpoint)."""


def job_spec(task: Task, spec: TaskSpec) -> dict[str, Any]:
    """What the job process is given (tunelab.training.job reads it)."""
    return {
        "task_id": task.id,
        "base_model_uri": spec.base_model_uri,
        "adapter_uri": spec.adapter_uri,
        "train_uri": spec.files["train"],
        "eval_uri": spec.files.get("validate"),
        "evaluation": spec.evaluation,
        "params": spec.parameters,
        "cpu_threads": max(1, int(spec.resources.cpu.values()[0]) // spec.processes),
    }


def run_task(ctx: Context, event: TaskScheduled) -> Event | None:
    """Train the task (resuming if an earlier attempt checkpointed); its outcome event,
    or None when there is nothing to announce. Raises JobCrashed for a retry."""
    with ctx.db.session() as session:
        task = session.get(Task, event.data.task_id)
        experiment = session.get(Experiment, event.data.experiment_id)
        if task is None or experiment is None:
            return None
        if task.status in TASK_TERMINAL:
            return outcome(event, task)  # a redelivery after the work was done
        spec = TaskSpec.of(task)
        job, count, task_gpu_type = job_spec(task, spec), spec.processes, spec.compute.gpu_type
        run = Run(ctx, event, task)
    lease = Lease(ctx.bus.redis, f"task-{event.data.task_id}")
    if not lease.acquire():
        return None  # a duplicate delivery: a live job has the task and will announce it
    try:
        return _train(ctx, event, run, job, count, task_gpu_type, lease)
    except TaskGone:
        return None  # deleted while it trained: nobody to tell
    finally:
        lease.release()


def _train(
    ctx: Context,
    event: TaskScheduled,
    run: Run,
    spec: dict[str, Any],
    count: int,
    task_gpu_type: str,
    lease: Lease,
) -> Event | None:
    run.note(f"attempt on {os.uname().nodename} with {count} process(es)")
    with tempfile.TemporaryDirectory(prefix="tunelab-task-") as tmp:
        spec_path = Path(tmp) / "job.json"
        spec_path.write_text(json.dumps(spec))
        job = JobProcess(
            job_command(spec_path, count),
            Path(tmp) / "job.log",
            _env(ctx, count, task_gpu_type),
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
        run.close("KILLED")
        return finish(ctx, event, TaskState.CANCELLED, None)
    if code == 0 and run.result is not None:
        registered = register_model(ctx, event, run.result)
        if isinstance(registered, TaskSucceeded):
            run.close("FINISHED", registered.data.model)
        else:  # cancelled while the model was saved
            run.close("KILLED")
        return registered
    # torchrun exits 1 whatever its ranks exited with: the job's own error message is
    # what tells a user error from a fault.
    if run.error is not None:
        run.close("FAILED")
        return finish(ctx, event, TaskState.FAILED, run.error)
    run.close(None)  # retried: the next attempt carries on with the run
    raise JobCrashed(f"training process exited with {code}: " + " | ".join(tail))


def _env(ctx: Context, processes: int, gpu_type: str) -> dict[str, str]:
    env = dict(os.environ)
    if gpu_type == CPU_TYPE:
        env["CUDA_VISIBLE_DEVICES"] = ""  # asked for no GPU, and not counted on one
    # DeepSpeed compiles its C++ ops on first use (minutes on a CPU): keep them.
    env.setdefault(
        "TORCH_EXTENSIONS_DIR", str(ctx.settings.model_cache_dir.parent / "torch_extensions")
    )
    if processes > 1:
        # Each rank gets its share of the cores; contention costs more than it gives.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return env
