"""Making an experiment: every rule checked before anything is stored, then the
experiment, its tasks (one per trial of a search) and `experiment.created` in one
transaction. The API's POST /api/v1/experiments makes them, and so does a fine-tuning
job whose files were still being checked when it was asked for, once they are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tunelab.clusters import clusters, placement_problems
from tunelab.dataset_rules import dataset_kind
from tunelab.db.tables import Dataset, Experiment, Model, ParameterGroup, Task, new_id
from tunelab.errors import Conflict, Invalid
from tunelab.events.envelope import derived_id
from tunelab.events.experiment import ExperimentCreated, ExperimentRef
from tunelab.experiment_rules import (
    ExperimentRequest,
    TaskRequest,
    resolve_params,
    resource_problems,
)
from tunelab.lifecycle.services import visible_model
from tunelab.params import Parameters, errors_of
from tunelab.scoring import METHODS, PREFERENCE_ACCURACY
from tunelab.search import trial_name


def create(
    state: Any,
    workspace: str,
    spec: ExperimentRequest,
    along: Callable[[Session, Experiment], None] | None = None,
) -> tuple[Experiment, list[Task]]:
    """Check every rule, then store the experiment, its tasks and `experiment.created`
    in one transaction (with what `along` adds to it) and send the event. `state` has
    the settings, database and bus: the API's, or a worker's context.

    Raises Invalid naming every problem, Conflict when the name is taken."""
    problems: list[dict[str, Any]] = []
    if spec.evaluation not in METHODS:
        problems.append(
            {
                "field": "evaluation",
                "message": f"no method {spec.evaluation!r}; methods: {sorted(METHODS)}",
            }
        )
    for message in placement_problems(state.settings, spec.cluster, spec.namespace):
        field = "namespace" if "namespace" in message.split(";")[0] else "cluster"
        problems.append({"field": field, "message": message})
    names = [t.name for t in spec.tasks]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append({"field": f"tasks[{i}].name", "message": f"{name!r} is used twice"})
    cluster = clusters(state.settings).get(spec.cluster)
    rows: list[tuple[str, dict[str, Any]]] = []
    with state.db.session() as session:
        if session.scalar(
            select(Experiment.id).where(
                Experiment.workspace_id == workspace, Experiment.name == spec.name
            )
        ):
            raise Conflict(f"An experiment named {spec.name!r} already exists.")
        for i, task in enumerate(spec.tasks):
            row = _check_task(session, workspace, spec, task, i, cluster, problems)
            method = METHODS.get(spec.evaluation)
            higher = method.higher_is_better if method else True
            rows += _trials(task, row, f"tasks[{i}]", problems, higher)
    taken = set(names)
    for name, _ in rows:
        if name not in names and name in taken:
            problems.append({"field": "tasks", "message": f"two tasks would be named {name!r}"})
        taken.add(name)
    for i, task in enumerate(spec.tasks):
        # A tpe search's later trials are named now, so that none can be taken then.
        if task.search is not None and task.search.method == "tpe":
            later = range(task.search.parallel + 1, (task.search.trials or 0) + 1)
            for name in (trial_name(task.name, n) for n in later):
                if name in taken:
                    problems.append(
                        {"field": f"tasks[{i}].search", "message": f"its trial {name!r} is taken"}
                    )
    if problems:
        fields = ", ".join(dict.fromkeys(p["field"] for p in problems))
        raise Invalid(f"The experiment cannot run: check {fields}.", problems)
    experiment = Experiment(
        id=new_id(),
        workspace_id=workspace,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        status="queued",
    )
    tasks = [
        Task(
            workspace_id=workspace,
            experiment_id=experiment.id,
            name=name,
            position=i,
            cluster=spec.cluster,
            spec=row,
            status="queued",
        )
        for i, (name, row) in enumerate(rows)
    ]
    try:
        with state.db.session() as session:
            session.add(experiment)
            session.add_all(tasks)
            session.flush()
            if along is not None:
                along(session, experiment)
            send = state.bus.stage(session, experiment_created(experiment))
    except IntegrityError:
        raise Conflict(f"An experiment named {spec.name!r} already exists.") from None
    send()
    return experiment, tasks


def experiment_created(experiment: Experiment) -> ExperimentCreated:
    """The experiment's `experiment.created`, under an id of its own: staged again, it
    is sent again, not recorded twice."""
    return ExperimentCreated(
        id=derived_id(f"{experiment.id}/experiment.created"),
        workspace=experiment.workspace_id,
        subject=f"experiments/{experiment.name}",
        data=ExperimentRef(experiment_id=experiment.id, name=experiment.name),
    )


def _trials(
    task: TaskRequest,
    row: dict[str, Any],
    at: str,
    problems: list[dict[str, Any]],
    higher_is_better: bool = True,
) -> list[tuple[str, dict[str, Any]]]:
    """The task's (name, row), or one per trial of its search: its parameters with the
    trial's values on top, and which search and point it is. A tpe search starts with
    `parallel` trials; the others are asked for as trials end (lifecycle.searches)."""
    base = row.get("parameters")
    if task.search is None or base is None:  # no search, or parameters already refused
        return [(task.name, row)]
    found = task.search.problems(base, at)
    # A DPO trial is scored by preference accuracy, whatever the experiment's method.
    higher = higher_is_better or base.get("finetune_type") == "DPO"
    points = task.search.points(higher) if not found else []
    tpe = task.search.model_dump(mode="json") if task.search.method == "tpe" else None
    trials = []
    for number, values in enumerate(points, 1):
        try:
            params = Parameters.model_validate({**base, **values})
        except ValidationError as exc:
            found += errors_of(exc, f"{at}.search")
            break
        trial = {
            "search": task.name,
            "number": number,
            "values": values,
            "parallel": task.search.parallel,
            **({"spec": tpe} if tpe else {}),
        }
        row_of_trial = {**row, "parameters": params.model_dump(mode="json"), "trial": trial}
        trials.append((trial_name(task.name, number), row_of_trial))
    problems += found
    return trials


def starting_point(model: Model) -> dict[str, Any]:
    """Where a task's training starts: a base model, or a fine-tuned one it continues (a
    LoRA model's adapter on its own base; a full model's weights as a base)."""
    if model.kind != "finetuned":
        return {"base_model_uri": model.uri}
    spec = model.spec or {}
    lineage = [{"name": model.name, "id": model.id}, *spec.get("lineage", [])]
    if spec.get("adapter"):
        return {
            "base_model_uri": spec["base_model_uri"],
            "adapter_uri": model.uri,
            "lineage": lineage,
        }
    return {"base_model_uri": model.uri, "lineage": lineage}


def _check_task(
    session: Session,
    workspace: str,
    spec: ExperimentRequest,
    task: Any,
    i: int,
    cluster: Any,
    problems: list[dict[str, Any]],
) -> dict[str, Any]:
    at = f"tasks[{i}]"
    place = (spec.cluster, spec.namespace)
    row: dict[str, Any] = {
        "base_model": task.base_model,
        "dataset": task.dataset,
        "validation_dataset": task.validation_dataset,
        "parameter_group": task.parameter_group,
        "overrides": task.overrides,
        "compute": task.compute.model_dump(),
        "resources_requested": task.resources.model_dump(mode="json"),
        "evaluation": spec.evaluation,
        "namespace": spec.namespace,
    }
    model = visible_model(session, workspace, task.base_model)
    if model is None:
        problems.append(
            {
                "field": f"{at}.base_model",
                "message": f"no model {task.base_model!r} (GET /api/v1/models)",
            }
        )
    elif model.status != "ready":
        problems.append(
            {
                "field": f"{at}.base_model",
                "message": f"model {task.base_model!r} is {model.status}, not ready",
            }
        )
    else:
        row.update(starting_point(model))
    dataset = session.scalar(
        select(Dataset).where(Dataset.workspace_id == workspace, Dataset.name == task.dataset)
    )
    if dataset is None:
        problems.append({"field": f"{at}.dataset", "message": f"no dataset {task.dataset!r}"})
    elif dataset.status != "ready":
        problems.append(
            {
                "field": f"{at}.dataset",
                "message": f"dataset {task.dataset!r} is {dataset.status}, not ready",
            }
        )
    elif (dataset.metadata_["cluster"], dataset.metadata_["namespace"]) != place:
        problems.append(
            {
                "field": f"{at}.dataset",
                "message": _elsewhere(
                    "dataset",
                    dataset.name,
                    dataset.metadata_["cluster"],
                    dataset.metadata_["namespace"],
                    place,
                ),
            }
        )
    else:
        row["dataset_id"], row["files"] = dataset.id, dataset.files
        row["dataset_kind"] = dataset_kind(dataset.stats)
    if task.validation_dataset is not None:
        _validation_split(session, workspace, task, at, place, row, problems)
    group = session.scalar(
        select(ParameterGroup).where(
            ParameterGroup.workspace_id == workspace, ParameterGroup.name == task.parameter_group
        )
    )
    if group is None:
        problems.append(
            {
                "field": f"{at}.parameter_group",
                "message": f"no parameter group {task.parameter_group!r}",
            }
        )
    elif (group.cluster, group.namespace) != place:
        problems.append(
            {
                "field": f"{at}.parameter_group",
                "message": _elsewhere(
                    "parameter group", group.name, group.cluster, group.namespace, place
                ),
            }
        )
    else:
        params = resolve_params(group.parameters, task, at, problems)
        if params is not None:
            row["parameters"] = params.model_dump(mode="json")
            watches = params.select == "best" or params.early_stopping_patience is not None
            held_out = params.validation_fraction > 0 or "validate" in (row.get("files") or {})
            if watches and "files" in row and not held_out:
                problems.append(
                    {
                        "field": f"{at}.overrides.validation_fraction",
                        "message": "select=best and early stopping watch a validation loss: "
                        f"dataset {task.dataset!r} has no validate split, so hold some of "
                        "its training rows out (validation_fraction > 0)",
                    }
                )
            if params.finetune_type == "SFT" and spec.evaluation == PREFERENCE_ACCURACY:
                problems.append(
                    {
                        "field": "evaluation",
                        "message": f"{PREFERENCE_ACCURACY} scores DPO tasks; task "
                        f"{task.name!r} trains SFT",
                    }
                )
            if params.finetune_type == "DPO" and row.get("dataset_kind") == "sft":
                problems.append(
                    {
                        "field": f"{at}.dataset",
                        "message": f"parameter group {group.name!r} trains DPO, on preference "
                        f"pairs; dataset {task.dataset!r} holds answers, not pairs (prompt, "
                        "chosen, rejected)",
                    }
                )
    if cluster is not None:
        found, parsed = resource_problems(task, cluster, at)
        problems += found
        row["resources"] = parsed
    return row


def _validation_split(
    session: Session,
    workspace: str,
    task: TaskRequest,
    at: str,
    place: tuple[str, str],
    row: dict[str, Any],
    problems: list[dict[str, Any]],
) -> None:
    """The task's validate split from another dataset: its training rows, if it is
    ready, where the task trains and of the same kind as the training dataset."""
    field, name = f"{at}.validation_dataset", str(task.validation_dataset)
    found = session.scalar(
        select(Dataset).where(Dataset.workspace_id == workspace, Dataset.name == name)
    )
    message = None
    if found is None:
        message = f"no dataset {name!r}"
    elif found.status != "ready":
        message = f"dataset {name!r} is {found.status}, not ready"
    elif (found.metadata_["cluster"], found.metadata_["namespace"]) != place:
        message = _elsewhere(
            "dataset", name, found.metadata_["cluster"], found.metadata_["namespace"], place
        )
    elif "files" in row and dataset_kind(found.stats) != row["dataset_kind"]:
        message = (
            f"dataset {name!r} holds {dataset_kind(found.stats)} rows, dataset "
            f"{task.dataset!r} {row['dataset_kind']} rows: they must be of one kind"
        )
    if message is not None:
        problems.append({"field": field, "message": message})
    elif "files" in row and found is not None:
        row["files"] = {**row["files"], "validate": (found.files or {})["train"]}
        row["validation_dataset"] = name


def _elsewhere(kind: str, name: str, cluster: str, namespace: str, place: tuple[str, str]) -> str:
    return (
        f"{kind} {name!r} is in {cluster}/{namespace}, the experiment in "
        f"{place[0]}/{place[1]}: they must be the same"
    )
