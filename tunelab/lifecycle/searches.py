"""TPE searches carry on as their trials end: each ended trial makes room for the next,
whose values TPE chooses from every trial so far (tunelab.search.Search.ask)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import select

from tunelab.context import Context
from tunelab.db.tables import Experiment, Task
from tunelab.lifecycle.specs import ExperimentSpec, TaskNeeds, Trial
from tunelab.lifecycle.states import EXPERIMENT_TERMINAL, TASK_TERMINAL, TaskState
from tunelab.params import Parameters, errors_of
from tunelab.scoring import METHODS
from tunelab.search import Search, trial_name


def continue_searches(ctx: Context, experiment_id: str) -> int:
    """Add the next trials of the experiment's tpe searches, as many as their
    `parallel` leaves room for and their `trials` allow; how many were added.

    The count is taken from the tasks themselves, under the experiment's row lock, so a
    redelivered task event adds nothing twice.
    """
    added = 0
    with ctx.db.session() as session:
        experiment = session.get(Experiment, experiment_id, with_for_update=True)
        if experiment is None or experiment.status in EXPERIMENT_TERMINAL:
            return 0
        tasks = session.scalars(select(Task).where(Task.experiment_id == experiment_id)).all()
        searches: dict[str, list[tuple[Task, Trial]]] = defaultdict(list)
        for task in tasks:
            trial = TaskNeeds.of(task).trial
            if trial is not None and trial.spec is not None:
                searches[trial.search].append((task, trial))
        method = METHODS.get(ExperimentSpec.of(experiment).evaluation)
        for name, trials in searches.items():
            search = Search.model_validate(trials[0][1].spec)
            dpo = trials[0][0].spec["parameters"].get("finetune_type") == "DPO"
            # A DPO trial is scored by preference accuracy, whatever the experiment's method.
            higher = dpo or (method.higher_is_better if method else True)
            active = sum(t.status not in TASK_TERMINAL for t, _ in trials)
            while len(trials) < (search.trials or 0) and active < search.parallel:
                task = _next_trial(search, name, trials, higher, tasks, added)
                session.add(task)
                added += 1
                active += task.status not in TASK_TERMINAL
    return added


def _next_trial(
    search: Search,
    name: str,
    trials: list[tuple[Task, Trial]],
    higher: bool,
    tasks: Sequence[Task],
    added: int,
) -> Task:
    """The search's next trial, asked of TPE given every trial so far (appended to
    `trials`). Values each valid alone may not go together (int4 without peft): such a
    trial is made failed, saying why, and the search goes on without it."""
    finished = [(tr.values, _score(t)) for t, tr in trials if t.status in TASK_TERMINAL]
    pending = [tr.values for t, tr in trials if t.status not in TASK_TERMINAL]
    number = max(tr.number for _, tr in trials) + 1
    values = search.ask(finished, pending, number, higher)
    template, first = trials[0]
    trial = first.model_copy(update={"number": number, "values": values})
    status, error = TaskState.QUEUED, None
    try:
        params = Parameters.model_validate({**template.spec["parameters"], **values})
    except ValidationError as exc:
        problem = errors_of(exc, f"search.{name}")[0]
        message = f"TPE asked for {values}, which cannot train: {problem['message']}."
        status, error = TaskState.FAILED, {"code": "bad_parameters", "message": message}
        params = Parameters.model_validate(template.spec["parameters"])
    task = Task(
        workspace_id=template.workspace_id,
        experiment_id=template.experiment_id,
        name=trial_name(name, number),
        position=max(t.position for t in tasks) + 1 + added,
        cluster=template.cluster,
        spec={
            **template.spec,
            "parameters": params.model_dump(mode="json"),
            "trial": trial.model_dump(mode="json"),
        },
        status=status,
        error=error,
        finished_at=datetime.now(UTC) if error else None,
    )
    trials.append((task, trial))
    return task


def _score(task: Task) -> float | None:
    """A finished trial's score; None for one that failed or was cancelled."""
    if task.status != TaskState.SUCCEEDED:
        return None
    score = (task.score or {}).get("score")
    return float(score) if score is not None else None
