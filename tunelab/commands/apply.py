"""`tunelab apply -f tunelab.yaml`: datasets, parameter groups, experiments and
services declared in one file, made to exist as declared, as `kubectl apply` does.

Everything is compared before anything is made: a resource that exists as declared is
unchanged, one that is missing is created, and one that exists otherwise stops the
apply with the field that differs (tunelab's resources are not edited in place:
delete it, or give it a new name). A second apply of the same file changes nothing.

    datasets:
      - name: faq
        file: faq.csv            # relative to this file; validate: and test: too
        language: en
    parameter_groups:
      - name: lora
        preset: tiny-lora
        parameters: {epochs: 3}
    experiments:
      - name: faq-1
        tasks: [{name: t1, base_model: tiny-llama, dataset: faq, parameter_group: lora}]
    services:
      - name: faq-bot
        model: {experiment: faq-1}  # its best task's model (or `task: t1`), or a name
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.api_requests import GroupRequest
from tunelab.client import ApiError, Client
from tunelab.commands.show import console, errors
from tunelab.commands.watch import watch
from tunelab.dataset_requests import DatasetMetadata
from tunelab.experiment_rules import ExperimentRequest
from tunelab.params import resolve
from tunelab.serving_rules import DeployRequest

HASH_LABEL = "tunelab.apply/sha256"
"""The label that holds the declared files' hash: a changed file is a changed dataset."""


class DeclaredDataset(DatasetMetadata):
    file: str
    validate_file: str | None = Field(default=None, alias="validate")
    test: str | None = None


class ModelOf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    experiment: str
    task: str | None = None
    """The task whose model is deployed; its experiment's best task if unset."""


class DeclaredService(DeployRequest):
    model: str | ModelOf  # type: ignore[assignment]


class Declaration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    datasets: list[DeclaredDataset] = Field(default_factory=list)
    parameter_groups: list[GroupRequest] = Field(default_factory=list)
    experiments: list[ExperimentRequest] = Field(default_factory=list)
    services: list[DeclaredService] = Field(default_factory=list)


class Refused(Exception):
    """The declaration cannot be applied; the message names the resource and field."""


@dataclass
class Plan:
    creates: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def load(path: Path) -> Declaration:
    try:
        raw = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as exc:
        raise Refused(f"{path}: not YAML: {exc}") from None
    try:
        return Declaration.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Refused(f"{path}: {where}: {first['msg']}") from None


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as file:  # a chunk at a time: datasets can be larger than memory
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _get(fetch: Callable[[str], Any], name: str) -> Any:
    try:
        return fetch(name)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _differs(kind: str, name: str, field: str, here: Any, there: Any) -> Refused:
    return Refused(
        f"{kind}/{name}: {field} is {here!r} in the file, {there!r} on the platform; "
        f"{kind} are not changed in place: delete {name!r} or give it another name"
    )


def plan(client: Client, declared: Declaration, base: Path) -> Plan:
    found = Plan()
    for dataset in declared.datasets:
        _plan_dataset(client, dataset, base, found)
    for group in declared.parameter_groups:
        _plan_group(client, group, found)
    for experiment in declared.experiments:
        _plan_experiment(client, experiment, found)
    for service in declared.services:
        _plan_service(client, service, found)
    return found


def _plan_dataset(client: Client, dataset: DeclaredDataset, base: Path, found: Plan) -> None:
    files = {"file": dataset.file, "validate": dataset.validate_file, "test": dataset.test}
    paths = {part: base / p for part, p in files.items() if p}
    for part, path in paths.items():
        if not path.is_file():
            raise Refused(f"datasets/{dataset.name}: {part}: no file {path}")
    digest = _digest(list(paths.values()))
    existing = _get(client.datasets.get, dataset.name)
    if existing is None:
        metadata = dataset.model_dump(
            exclude={"file", "validate_file", "test"}, exclude_unset=True, mode="json"
        )
        metadata["labels"] = {**dataset.labels, HASH_LABEL: digest}

        def create() -> None:
            _upload(client, metadata, paths)

        found.creates.append((f"datasets/{dataset.name}", create))
        return
    there = existing.labels.get(HASH_LABEL)
    if there != digest:
        raise _differs("datasets", dataset.name, "the files' sha256", digest, there)
    for name in dataset.model_fields_set - {"name", "file", "validate_file", "test", "labels"}:
        here = getattr(dataset, name)
        here = here.model_dump(mode="json") if isinstance(here, BaseModel) else here
        if getattr(existing, name, None) != here:
            raise _differs("datasets", dataset.name, name, here, getattr(existing, name, None))
    found.unchanged.append(f"datasets/{dataset.name}")


def _upload(client: Client, metadata: dict[str, Any], paths: dict[str, Path]) -> None:
    from tunelab.commands.datasets import upload_and_wait

    name = metadata.pop("name")
    ready = upload_and_wait(
        client,
        name,
        paths["file"],
        paths.get("validate"),
        paths.get("test"),
        metadata,
    )
    if not ready:
        raise Refused(f"datasets/{name}: its files failed the checks (above)")


def _plan_group(client: Client, group: GroupRequest, found: Plan) -> None:
    existing = _get(client.parameter_groups.get, group.name)
    if existing is None:
        found.creates.append(
            (
                f"parameter_groups/{group.name}",
                lambda: _ignore(client.parameter_groups.create(group)),
            )
        )
        return
    values = dict(group.parameters)
    if group.finetune_type:
        values["finetune_type"] = group.finetune_type
    wanted = resolve(group.preset, values).model_dump(mode="json")
    for key, value in wanted.items():
        if existing.parameters.get(key) != value:
            raise _differs(
                "parameter_groups", group.name, f"parameters.{key}", value,
                existing.parameters.get(key),
            )  # fmt: skip
    for key in ("cluster", "namespace"):
        if getattr(existing, key) != getattr(group, key):
            raise _differs(
                "parameter_groups", group.name, key, getattr(group, key), getattr(existing, key)
            )
    found.unchanged.append(f"parameter_groups/{group.name}")


def _ignore(_: Any) -> None:
    return None


def _plan_experiment(client: Client, experiment: ExperimentRequest, found: Plan) -> None:
    existing = _get(client.experiments.get, experiment.name)
    if existing is None:
        found.creates.append(
            (
                f"experiments/{experiment.name}",
                lambda: _ignore(client.experiments.create(experiment)),
            )
        )
        return
    for key in ("cluster", "namespace"):
        if getattr(existing, key, None) != getattr(experiment, key):
            raise _differs(
                "experiments", experiment.name, key, getattr(experiment, key),
                getattr(existing, key, None),
            )  # fmt: skip
    if existing.evaluation != experiment.evaluation:
        raise _differs(
            "experiments", experiment.name, "evaluation", experiment.evaluation,
            existing.evaluation,
        )  # fmt: skip
    there = {t.name: t for t in existing.tasks}
    for i, task in enumerate(experiment.tasks):
        if task.search is not None:
            continue  # its trials are the tasks there
        other = there.get(task.name)
        if other is None:
            raise _differs("experiments", experiment.name, f"tasks[{i}].name", task.name, None)
        for key in ("base_model", "dataset", "validation_dataset", "parameter_group"):
            if getattr(task, key) != getattr(other, key):
                raise _differs(
                    "experiments", experiment.name, f"tasks[{i}].{key}", getattr(task, key),
                    getattr(other, key),
                )  # fmt: skip
        overrides = getattr(other, "overrides", None) or {}
        if task.overrides and task.overrides != overrides:
            raise _differs(
                "experiments", experiment.name, f"tasks[{i}].overrides", task.overrides, overrides
            )
    found.unchanged.append(f"experiments/{experiment.name}")


def _plan_service(client: Client, service: DeclaredService, found: Plan) -> None:
    existing = _get(client.services.get, service.name)
    if existing is None:
        found.creates.append((f"services/{service.name}", lambda: _deploy(client, service)))
        return
    if isinstance(service.model, str) and service.model != existing.model:
        raise _differs("services", service.name, "model", service.model, existing.model)
    if isinstance(service.model, ModelOf):
        model = _model_of(client, service.model, wait=False)
        if model is not None and model != existing.model:
            raise _differs("services", service.name, "model", model, existing.model)
    found.unchanged.append(f"services/{service.name}")


def _model_of(client: Client, of: ModelOf, wait: bool) -> str | None:
    """The model of the experiment's task (its best), waiting for the experiment to
    end when `wait`; None if it has not ended."""
    experiment = client.experiments.get(of.experiment)
    if not experiment.ended and wait:
        console.print(f"waiting for experiment {of.experiment}")
        watch(client, of.experiment)
        experiment = client.experiments.get(of.experiment)
    if not experiment.ended:
        return None
    name = of.task or experiment.best_task
    task = next((t for t in experiment.tasks if t.name == name), None)
    if task is None or task.model is None:
        raise Refused(
            f"experiment {of.experiment} {experiment.status} without a model"
            + (f" from task {name!r}" if name else "")
        )
    return task.model


def _deploy(client: Client, service: DeclaredService) -> None:
    model: str | None = service.model if isinstance(service.model, str) else None
    if isinstance(service.model, ModelOf):
        model = _model_of(client, service.model, wait=True)
        if model is None:
            raise Refused(f"services/{service.name}: experiment {service.model.experiment} "
                          "has not ended; apply again once it has")  # fmt: skip
    spec = service.model_dump(mode="json", exclude_unset=True)
    spec["model"] = model
    deployed = client.services.create(spec)
    while deployed.status == "deploying":
        time.sleep(1)
        deployed = client.services.get(service.name)
    if deployed.status != "ready":
        raise Refused(
            f"services/{service.name}: {deployed.status}: {(deployed.error or {}).get('message')}"
        )


Outcome = Literal["no change", "applied"]


def apply(client: Client, path: Path) -> int:
    try:
        declared = load(path)
        planned = plan(client, declared, path.parent)
        for name in planned.unchanged:
            console.print(f"{name} unchanged")
        for name, create in planned.creates:
            create()
            console.print(f"{name} created")
    except Refused as exc:
        errors.print(f"tunelab apply: {exc}", style="red", markup=False)
        return 1
    except ValidationError as exc:  # a value the server's models refuse, caught here
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        errors.print(f"tunelab apply: {where}: {first['msg']}", style="red", markup=False)
        return 1
    except ApiError as exc:
        errors.print(f"tunelab apply: {exc.message}", style="red", markup=False)
        for detail in exc.details[:10]:
            errors.print(f"  {detail.get('field')}: {detail.get('message')}", markup=False)
        return 1
    outcome: Outcome = "applied" if planned.creates else "no change"
    console.print(f"{outcome}: {len(planned.creates)} created, {len(planned.unchanged)} unchanged")
    return 0
