"""The seed's rules for an experiment's tasks, checked before anything is stored.

Each problem names its field the way the request spells it (`tasks[1].resources.cpu`),
so the console can show it beside the input it is about.
"""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.clusters import CPU_TYPE, Cluster
from tunelab.names import Name
from tunelab.params import Parameters, errors_of
from tunelab.quantity import parse_quantity
from tunelab.search import Search


class Compute(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu_type: str = CPU_TYPE
    gpu_count: int = Field(default=1, ge=0, le=64)
    """Cards to train on (distributed over that many processes); with gpu_type `cpu`,
    the number of training processes."""


class Range(BaseModel):
    """A request and a limit, as quantities; parsed where the rules check them
    (span_problems), so that each problem is named as the contract names fields."""

    model_config = ConfigDict(extra="forbid")
    request: str | int | float
    limit: str | int | float


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: Range = Field(default_factory=lambda: Range(request="1", limit="2"))
    memory: Range = Field(default_factory=lambda: Range(request="2Gi", limit="4Gi"))


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    base_model: str
    dataset: str
    validation_dataset: str | None = None
    """Another dataset whose rows are this task's validate split (in place of the
    dataset's own): OpenAI's `validation_file`."""
    parameter_group: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    search: Search | None = None
    """Trials instead of one run: the overrides with each point of the search on top."""
    compute: Compute = Field(default_factory=Compute)
    resources: Resources = Field(default_factory=Resources)


class ExperimentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    evaluation: str = "rouge-bleu"
    cluster: Name = "local"
    namespace: Name = "default"
    tasks: list[TaskRequest] = Field(min_length=1, max_length=32)


def processes(compute: Compute) -> int:
    return max(1, compute.gpu_count)


def quantization_available(compute: Compute) -> bool:
    return compute.gpu_type != CPU_TYPE and importlib.util.find_spec("bitsandbytes") is not None


def resolve_params(
    base: dict[str, Any], task: TaskRequest, at: str, problems: list[dict[str, Any]]
) -> Parameters | None:
    """The group's parameters with the task's overrides; problems appended, not raised."""
    try:
        params = Parameters.model_validate({**base, **task.overrides})
    except ValidationError as exc:
        problems += errors_of(exc, f"{at}.overrides")
        return None
    if params.quantization != "none" and not quantization_available(task.compute):
        problems.append(
            {
                "field": _parameter_field(task, at, "quantization"),
                "message": f"{params.quantization} quantization needs bitsandbytes and a GPU; "
                f"this task trains on {task.compute.gpu_type!r}",
            }
        )
    if params.batch_size < processes(task.compute):
        problems.append(
            {
                "field": _parameter_field(task, at, "batch_size"),
                "message": f"batch_size {params.batch_size} is smaller than the "
                f"{processes(task.compute)} processes that share each batch",
            }
        )
    return params


def resource_problems(
    task: TaskRequest, cluster: Cluster, at: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Problems with the task's compute and resources, and their parsed values."""
    problems, parsed = span_problems(task.resources, cluster, f"{at}.resources")
    problems += compute_problems(task.compute, cluster, at)
    return problems, parsed


class Spans(Protocol):
    cpu: Range
    memory: Range


def span_problems(
    resources: Spans, cluster: Cluster, at: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Problems with CPU and memory requests and limits (fields named under `at`), and
    their values in cores and bytes: a request within its limit and within what the
    cluster has in total."""
    problems: list[dict[str, Any]] = []
    parsed: dict[str, Any] = {}
    totals = {"cpu": cluster.cpu, "memory": cluster.memory}
    for kind in ("cpu", "memory"):
        span: Range = getattr(resources, kind)
        values: dict[str, Decimal] = {}
        for bound in ("request", "limit"):
            try:
                values[bound] = parse_quantity(getattr(span, bound))
            except ValueError as exc:
                problems.append({"field": f"{at}.{kind}.{bound}", "message": str(exc)})
        if len(values) < 2:
            continue
        field = f"{at}.{kind}"
        if values["request"] <= 0:
            problems.append({"field": f"{field}.request", "message": "must be more than 0"})
        if values["request"] > values["limit"]:
            problems.append(
                {
                    "field": f"{field}.request",
                    "message": f"request {span.request} exceeds limit {span.limit}",
                }
            )
        if values["request"] > totals[kind]:
            problems.append(
                {
                    "field": f"{field}.request",
                    "message": f"request {span.request} is more than cluster "
                    f"{cluster.name!r} has in total ({_human(kind, totals[kind])})",
                }
            )
        parsed[kind] = {"request": float(values["request"]), "limit": float(values["limit"])}
    return problems, parsed


def compute_problems(compute: Compute, cluster: Cluster, at: str) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    if compute.gpu_type not in cluster.gpus:
        problems.append(
            {
                "field": f"{at}.compute.gpu_type",
                "message": f"cluster {cluster.name!r} has no {compute.gpu_type!r} "
                f"cards; it has {sorted(cluster.gpus)}",
            }
        )
    elif compute.gpu_type == CPU_TYPE:
        if processes(compute) > cluster.cpu:
            problems.append(
                {
                    "field": f"{at}.compute.gpu_count",
                    "message": f"{compute.gpu_count} training processes are more than "
                    f"the {cluster.cpu} CPU cores of cluster {cluster.name!r}",
                }
            )
    elif compute.gpu_count < 1 or compute.gpu_count > cluster.gpus[compute.gpu_type]:
        problems.append(
            {
                "field": f"{at}.compute.gpu_count",
                "message": f"must be 1 to {cluster.gpus[compute.gpu_type]}: cluster "
                f"{cluster.name!r} has {cluster.gpus[compute.gpu_type]} "
                f"{compute.gpu_type!r} cards in total",
            }
        )
    return problems


def _human(kind: str, value: Decimal) -> str:
    if kind == "memory":
        return f"{float(value) / 2**30:.1f}Gi"
    return f"{value} cores"


def _parameter_field(task: TaskRequest, at: str, name: str) -> str:
    """Where a parameter's value came from: the task's override, else its group."""
    return f"{at}.overrides.{name}" if name in task.overrides else f"{at}.parameter_group"
