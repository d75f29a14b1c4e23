"""The training actor: `task.scheduled` in; progress, then `task.succeeded`, `.failed` or
`.cancelled` out, with the fine-tuned model registered in the repository."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dramatiq.middleware import TimeLimitExceeded
from sqlalchemy import or_, select

from tunelab.clusters import CPU_TYPE
from tunelab.db.models import Dataset, Experiment, Model, Task
from tunelab.events.envelope import Event
from tunelab.events.experiment import (
    TaskCancelled,
    TaskFailed,
    TaskFailedData,
    TaskProgress,
    TaskProgressData,
    TaskRef,
    TaskScheduled,
    TaskSucceeded,
    TaskSucceededData,
)
from tunelab.events.model import ModelRegistered, ModelRegisteredData
from tunelab.settings import get_settings
from tunelab.store import ObjectNotFound, keys
from tunelab.workers.context import WorkerContext, current
from tunelab.workers.gpu.launch import JobProcess, Message, job_command
from tunelab.workers.gpu.lease import TaskLease
from tunelab.workers.gpu.model_card import model_card
from tunelab.workers.registry import subscriber

TERMINAL = ("succeeded", "failed", "cancelled")
EXIT_USER_ERROR, EXIT_STOPPED = 3, 4
PROGRESS_EVERY_S = 0.5
FLUSH_EVERY_S = 5.0


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: a diverged loss or an
    infinite perplexity must not make the task unreadable as JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


class JobCrashed(RuntimeError):
    """The job process died of a fault worth a retry (it resumes from its checkpoint)."""


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


class Run:
    """One attempt at a task: relays the job's messages into the database, the event
    bus and the task's metrics and logs objects."""

    def __init__(self, ctx: WorkerContext, cause: TaskScheduled, task: Task) -> None:
        self.ctx, self.cause = ctx, cause
        self.task_id, self.prefix = task.id, keys.task_prefix(task.id)
        self.ref = cause.data.model_dump()
        self.points = self._load_points()
        self.last_progress = 0.0
        self.last_flush = time.monotonic()
        self.pending: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.log_lines = self._load_logs()

    def _load_points(self) -> list[dict[str, Any]]:
        try:
            raw = self.ctx.store.read_bytes(f"{self.prefix}metrics.jsonl")
        except ObjectNotFound:
            return []
        return [json.loads(line) for line in raw.splitlines() if line]

    def _load_logs(self) -> str:
        try:
            return self.ctx.store.read_bytes(f"{self.prefix}logs.txt").decode()
        except ObjectNotFound:
            return ""

    def handle(self, message: Message) -> None:
        fields = finite(message.fields)
        if message.kind == "progress":
            self.points = [p for p in self.points if p["step"] < fields["step"]]
            self.points.append({**fields, "time": time.time()})
            self.pending = fields
            if time.monotonic() - self.last_progress >= PROGRESS_EVERY_S:
                self.publish_progress()
        elif message.kind == "resumed":
            # The checkpoint's own history: what the killed attempt had not flushed too.
            self.points = list(fields["history"])
            self.note(f"resumed from the checkpoint at step {fields['step']}")
        elif message.kind == "phase":
            self.note(f"phase: {fields['phase']}")
            if fields["phase"] == "evaluating":
                self.publish_progress()
                self._set(status="evaluating")
            elif fields["phase"] == "training" and "total_steps" in fields:
                self._set(progress={"step": 0, "total_steps": fields["total_steps"], "epoch": 0})
        elif message.kind == "result":
            self.result = fields
        elif message.kind == "error":
            self.error = {"code": fields["code"], "message": fields["message"]}
        elif message.kind in ("log", "checkpoint", "stopped"):
            self.note(fields.get("message") or f"{message.kind}: {fields}")

    def note(self, line: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        self.log_lines += f"{stamp} [tunelab] {line}\n"

    def _set(self, **fields: Any) -> None:
        with self.ctx.db.session() as session:
            task = session.get(Task, self.task_id, with_for_update=True)
            if task is not None and task.status not in TERMINAL:
                for name, value in fields.items():
                    setattr(task, name, value)

    def publish_progress(self) -> None:
        if self.pending is None:
            return
        p, self.pending = self.pending, None
        self.last_progress = time.monotonic()
        self._set(
            progress={"step": p["step"], "total_steps": p["total_steps"], "epoch": p["epoch"]},
            metrics={
                "loss": p["loss"],
                "learning_rate": p["learning_rate"],
                "tokens_per_second": p["tokens_per_second"],
            },
        )
        self.ctx.bus.publish(
            TaskProgress(
                workspace=self.cause.workspace,
                subject=self.cause.subject,
                data=TaskProgressData(
                    **self.ref_only(),
                    **{
                        k: p[k]
                        for k in (
                            "step",
                            "total_steps",
                            "epoch",
                            "loss",
                            "learning_rate",
                            "tokens_per_second",
                        )
                    },
                ),
            )
        )

    def ref_only(self) -> dict[str, str]:
        return {k: self.ref[k] for k in TaskRef.model_fields}

    def flush(self, job_log: Path, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_flush < FLUSH_EVERY_S:
            return
        self.last_flush = time.monotonic()
        store = self.ctx.store
        store.put_bytes(
            f"{self.prefix}metrics.jsonl",
            "".join(json.dumps(p) + "\n" for p in self.points).encode(),
        )
        text = self.log_lines + job_log.read_text("utf-8", "replace")
        store.put_bytes(f"{self.prefix}logs.txt", text.encode())

    def cancelled(self) -> bool:
        with self.ctx.db.session() as session:
            status = session.scalar(select(Task.status).where(Task.id == self.task_id))
        return status in (None, "cancelled")


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
        return _finish(ctx, event, "cancelled", None)
    if code == 0 and run.result is not None:
        return register_model(ctx, event, run.result)
    # torchrun exits 1 whatever its ranks exited with: the job's own error message is
    # what tells a user error from a fault.
    if run.error is not None:
        return _finish(ctx, event, "failed", run.error)
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


def _finish(
    ctx: WorkerContext, event: TaskScheduled, status: str, error: dict[str, Any] | None
) -> Event:
    with ctx.db.session() as session:
        task = session.get(Task, event.data.task_id, with_for_update=True)
        if task is not None:
            if task.status not in TERMINAL:
                task.status, task.error = status, error
                task.finished_at = datetime.now(UTC)
            return outcome(ctx, event, task)
    return TaskCancelled.following(
        event, data=TaskRef(**{k: getattr(event.data, k) for k in TaskRef.model_fields})
    )


def outcome(ctx: WorkerContext, event: TaskScheduled, task: Task) -> Event:
    ref = TaskRef(**{k: getattr(event.data, k) for k in TaskRef.model_fields})
    if task.status == "succeeded":
        score = task.score or {}
        return TaskSucceeded.following(
            event,
            data=TaskSucceededData(
                **ref.model_dump(),
                model=task.model or "",
                score=score.get("details", {}),
                base_score=score.get("base_score", {}),
            ),
        )
    if task.status == "failed":
        return TaskFailed.following(
            event, data=TaskFailedData(**ref.model_dump(), error=task.error or {})
        )
    return TaskCancelled.following(event, data=ref)


def _model_name(session: Any, workspace: str, experiment: str, task: Task) -> str:
    name = f"{experiment}-{task.name}"[:63].rstrip("-")
    taken = session.scalar(
        select(Model.id).where(
            or_(Model.workspace_id == workspace, Model.workspace_id.is_(None)), Model.name == name
        )
    )
    if taken and taken != task.id:
        name = f"{name[:56].rstrip('-')}-{task.id[:6]}"
    return name


def register_model(ctx: WorkerContext, event: TaskScheduled, result: dict[str, Any]) -> Event:
    """The fine-tuned model into the repository and the task succeeded, in one
    transaction; the model's id is the task's, so a redelivery registers nothing twice."""
    data = event.data
    with ctx.db.session() as session:
        task = session.get(Task, data.task_id, with_for_update=True)
        if task is None:
            raise JobCrashed("the task disappeared while training")
        if task.status in TERMINAL:
            return outcome(ctx, event, task)  # cancelled while saving: no model
        dataset = session.get(Dataset, task.spec["dataset_id"])
        name = _model_name(session, task.workspace_id, data.experiment, task)
        spec = {
            "base_model": task.spec["base_model"],
            "base_model_uri": task.spec["base_model_uri"],
            "experiment": data.experiment,
            "task": data.task,
            "adapter": result["adapter"],
            "score": result["score"]["score"],
            "base_score": result["base_score"]["score"],
            "evaluation": result["score"],
            "dataset": {
                "name": task.spec["dataset"],
                "id": task.spec["dataset_id"],
                "sha256": result.get("dataset_sha256"),
                "rows": (dataset.stats or {}).get("train", {}).get("rows") if dataset else None,
            },
            "parameters": task.spec["parameters"],
            "chat_template": result.get("chat_template"),
            "stop_tokens": result.get("stop_tokens"),
            "metrics": {"final_loss": result["final_loss"], "steps": result["steps"]},
            "files": result["files"],
        }
        prefix = keys.model_prefix(task.id)
        ctx.store.put_bytes(f"{prefix}README.md", model_card(name, spec).encode())
        if session.get(Model, task.id) is None:
            session.add(
                Model(
                    id=task.id,
                    workspace_id=task.workspace_id,
                    name=name,
                    kind="finetuned",
                    uri=ctx.store.uri(prefix),
                    spec=spec,
                )
            )
        task.status, task.model = "succeeded", name
        task.score = {
            "score": spec["score"],
            "details": result["score"],
            "base_score": result["base_score"],
        }
        task.finished_at = datetime.now(UTC)
        send_model = ctx.bus.stage(
            session,
            ModelRegistered.following(
                event,
                data=(
                    ModelRegisteredData(
                        model_id=task.id,
                        name=name,
                        kind="finetuned",
                        base_model=spec["base_model"],
                        experiment=data.experiment,
                        task=data.task,
                    )
                ),
            ),
        )
        succeeded = outcome(ctx, event, task)
    send_model()
    return succeeded


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
    ctx.bus.publish(_finish(ctx, event, "failed", reason))


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
