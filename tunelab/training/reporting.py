"""Reporting a training job's messages: into the task's row (progress, the evaluating
phase), `task.progress` events, and the task's metrics and logs objects."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunelab.context import Context
from tunelab.db.tables import Task, Workspace
from tunelab.events.experiment import TaskProgress, TaskProgressData, TaskRef, TaskScheduled
from tunelab.lifecycle.specs import TaskSpec
from tunelab.lifecycle.states import TASK_TERMINAL
from tunelab.lifecycle.tasks import mark_evaluating
from tunelab.store import ObjectNotFound, keys
from tunelab.tracking import Tracker
from tunelab.training.launch import Message

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


class Run:
    """One attempt at a task: relays the job's messages into the database, the event
    bus and the task's metrics and logs objects."""

    def __init__(self, ctx: Context, cause: TaskScheduled, task: Task) -> None:
        self.ctx, self.cause = ctx, cause
        self.task_id = task.id
        self.ref = cause.data.model_dump()
        self.points = self._load_points()
        self.last_progress = 0.0
        self.last_flush = time.monotonic()
        self.pending: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.log_lines = self._load_logs()
        watched = [p["val_loss"] for p in self.points if p.get("val_loss") is not None]
        self.val_loss: float | None = watched[-1] if watched else None
        self.tracker: Tracker | None = None
        self._tracking = self._tracking_of(task) if ctx.settings.mlflow_uri else None

    def _track(self) -> Tracker | None:
        """The attempt's tracked run, started with its first message (so a duplicate
        delivery, which never runs the job, starts none)."""
        if self.tracker is None and self._tracking is not None:
            self.tracker = Tracker(**self._tracking)
        return self.tracker

    def _tracking_of(self, task: Task) -> dict[str, Any]:
        """What the task's tracked run is made with (read now, while `task` is loaded)."""
        assert self.ctx.settings.mlflow_uri is not None
        data, spec = self.cause.data, TaskSpec.of(task)
        with self.ctx.db.session() as session:
            workspace = session.get_one(Workspace, task.workspace_id).name
        return {
            "uri": self.ctx.settings.mlflow_uri,
            "experiment": f"{workspace}/{data.experiment}",
            "run_name": data.task,
            "task_id": task.id,
            "params": spec.parameters,
            "tags": {
                "tunelab.workspace": workspace,
                "tunelab.experiment": data.experiment,
                "tunelab.task": data.task,
                "tunelab.dataset": spec.dataset,
                "tunelab.base_model": spec.base_model,
            },
        }

    def close(self, status: str | None, model: str = "") -> None:
        """The attempt is over: the tracked run ends with `status` (FINISHED, FAILED,
        KILLED), or stays open for the next attempt (None)."""
        if self.tracker is None:
            return
        if self.result is not None:
            score, base = self.result["score"], self.result["base_score"]
            url = self.ctx.settings.public_url or (
                f"http://{self.ctx.settings.api_host}:{self.ctx.settings.api_port}"
            )
            tags = {"tunelab.model": model, "tunelab.model_url": f"{url}/#/models/{model}"}
            self.tracker.result(
                {"score": score["score"], "base_score": base["score"],
                 "final_loss": self.result["final_loss"]},
                tags if model else None,
            )  # fmt: skip
        self.tracker.close(status)

    def _load_points(self) -> list[dict[str, Any]]:
        try:
            raw = self.ctx.store.read_bytes(keys.task_file(self.task_id, "metrics.jsonl"))
        except ObjectNotFound:
            return []
        return [json.loads(line) for line in raw.splitlines() if line]

    def _load_logs(self) -> str:
        try:
            return self.ctx.store.read_bytes(keys.task_file(self.task_id, "logs.txt")).decode()
        except ObjectNotFound:
            return ""

    def handle(self, message: Message) -> None:
        fields = finite(message.fields)
        self._track()
        if message.kind == "progress":
            self.points = [p for p in self.points if p["step"] < fields["step"]]
            self.points.append({**fields, "time": time.time()})
            if fields.get("val_loss") is not None:
                self.val_loss = fields["val_loss"]
            if self.tracker is not None:
                self.tracker.step(fields["step"], {
                    k: fields.get(k)
                    for k in ("loss", "learning_rate", "tokens_per_second", "val_loss", "rewards")
                    if fields.get(k) is not None
                })  # fmt: skip
            self.pending = fields
            if time.monotonic() - self.last_progress >= PROGRESS_EVERY_S:
                self.publish_progress()
        elif message.kind == "resumed":
            # The checkpoint's own history: what the killed attempt had not flushed too.
            # A checkpoint keeps no times: those flushed before keep theirs, the rest
            # take the last known one (not 0, which would read as 1970).
            times = {p["step"]: p["time"] for p in self.points if "time" in p}
            known = min(times.values(), default=time.time())
            self.points = []
            for point in fields["history"]:
                known = times.get(point["step"], known)
                self.points.append({**point, "time": known})
            self.note(f"resumed from the checkpoint at step {fields['step']}")
        elif message.kind == "phase":
            self.note(f"phase: {fields['phase']}")
            if fields["phase"] == "evaluating":
                self.publish_progress()
                mark_evaluating(self.ctx, self.task_id)
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
            if task is not None and task.status not in TASK_TERMINAL:
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
                "val_loss": self.val_loss,
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
                    val_loss=self.val_loss,
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
            keys.task_file(self.task_id, "metrics.jsonl"),
            "".join(json.dumps(p) + "\n" for p in self.points).encode(),
        )
        text = self.log_lines + job_log.read_text("utf-8", "replace")
        store.put_bytes(keys.task_file(self.task_id, "logs.txt"), text.encode())

    def cancelled(self) -> bool:
        with self.ctx.db.session() as session:
            status = session.scalar(select(Task.status).where(Task.id == self.task_id))
        return status in (None, "cancelled")
