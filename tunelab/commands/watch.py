"""`tunelab experiments watch`: a live bar per task from the event stream (step, loss,
validation loss, tokens/s, time left), ending with the experiment; its outcome is the
exit code (0 succeeded, 1 failed, 2 cancelled)."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from tunelab.client import Client
from tunelab.commands.show import console, errors
from tunelab.views import ExperimentView, TaskView

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}


def _number(value: Any, digits: str = ".4f") -> str:
    return "-" if value is None else format(value, digits)


class Bars:
    """One bar per task, kept up to date from the task's rows and progress events."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.ids: dict[str, TaskID] = {}

    def _id(self, name: str) -> TaskID:
        if name not in self.ids:
            self.ids[name] = self.progress.add_task(
                name, total=None, status="queued", loss="-", val_loss="-", speed="-"
            )
        return self.ids[name]

    def task(self, task: TaskView) -> None:
        """A task as the experiment shows it."""
        progress = task.progress or {}
        metrics = task.metrics or {}
        done = task.status == "succeeded"
        total = progress.get("total_steps")
        self.progress.update(
            self._id(task.name),
            total=total,
            completed=total if done and total else progress.get("step", 0),
            status=task.status,
            loss=_number(metrics.get("loss")),
            val_loss=_number(metrics.get("val_loss")),
            speed=_number(metrics.get("tokens_per_second"), ".0f"),
        )

    def step(self, data: dict[str, Any]) -> None:
        """A task.progress event."""
        self.progress.update(
            self._id(data["task"]),
            total=data["total_steps"],
            completed=data["step"],
            status="training",
            loss=_number(data.get("loss")),
            val_loss=_number(data.get("val_loss")),
            speed=_number(data.get("tokens_per_second"), ".0f"),
        )


def progress_bars() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[status]:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("step  loss {task.fields[loss]}  val {task.fields[val_loss]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TimeRemainingColumn(),
        console=console,
    )


def watch(client: Client, name: str) -> int:
    """Follow the experiment until it ends; its exit code."""
    experiment = client.experiments.get(name)
    with progress_bars() as progress:
        bars = Bars(progress)
        for task in experiment.tasks:
            bars.task(task)
        for event in client.watch(name):
            if event["type"] == "task.progress":
                bars.step(event["data"])
            elif event["type"].startswith(("task.", "experiment.")):
                for task in client.experiments.get(name).tasks:
                    bars.task(task)
        experiment = client.experiments.get(name)
        for task in experiment.tasks:
            bars.task(task)
    outcome(experiment)
    return EXIT_CODES.get(experiment.status, 1)


def outcome(experiment: ExperimentView) -> None:
    if experiment.status == "succeeded":
        best = next((t for t in experiment.tasks if t.name == experiment.best_task), None)
        model = f", model {best.model}" if best and best.model else ""
        console.print(
            f"experiment {experiment.name} succeeded: best task {experiment.best_task}{model}",
            markup=False,
        )
        return
    errors.print(f"experiment {experiment.name} {experiment.status}", markup=False)
    for task in experiment.tasks:
        if task.error:
            errors.print(f"  {task.name}: {task.error.get('message')}", markup=False)
