"""What a model service asks for, and whether it can fit.

The seed warns that a service given too little "won't start"; here it is told why: a
request beyond the cluster, GPUs the cluster lacks, or less memory than a server of its
model needs. Each problem names its field as the request spells it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.clusters import CPU_TYPE, Cluster
from tunelab.experiment_rules import Range, span_problems
from tunelab.names import Name
from tunelab.quantity import parse_quantity
from tunelab.settings import Settings

GiB = 2**30


class ServiceResources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu_type: str | None = None
    """A GPU type of the cluster; unset: any it has (or the CPU with gpu_count 0)."""
    gpu_count: int = Field(default=0, ge=0, le=64)
    cpu: Range = Field(default_factory=lambda: Range(request="1", limit="2"))
    memory: Range = Field(default_factory=lambda: Range(request="4Gi", limit="6Gi"))


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    model: str = Field(min_length=1)
    cluster: Name = "local"
    namespace: Name = "default"
    resources: ServiceResources = Field(default_factory=ServiceResources)
    replicas: int = Field(default=1, ge=1, le=16)
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    """What serves it; `auto` is the deployment's choice (TUNELAB_SERVING_ENGINE)."""
    store: bool = False
    """Keep every chat of the service (as if each request set `store: true`)."""


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) + sum(
        p.stat().st_size for p in model_dir.glob("*.bin")
    )


def server_memory_need(settings: Settings, weights: int) -> float:
    """Bytes a server of a model with `weights` bytes of weights needs at least."""
    return weights * 1.2 + (settings.vllm_kv_cache_gib + settings.serving_overhead_gib) * GiB


def fit_problems(
    settings: Settings,
    request: DeployRequest,
    cluster: Cluster,
    weights: int,
    memory_in_use: float,
) -> list[dict[str, Any]]:
    """Why the service cannot run; empty when it can. `memory_in_use`: the memory
    requests of the cluster's other live services."""
    res = request.resources
    problems, parsed = span_problems(res, cluster, "resources")
    cards = {t: n for t, n in cluster.gpus.items() if t != CPU_TYPE and n > 0}
    if res.gpu_type is not None and res.gpu_type != CPU_TYPE and res.gpu_type not in cards:
        problems.append(
            {
                "field": "resources.gpu_type",
                "message": f"cluster {cluster.name!r} has no {res.gpu_type!r} cards; "
                f"it has {sorted(cards) or 'none'}",
            }
        )
    elif res.gpu_count > 0:
        have = cards.get(res.gpu_type, 0) if res.gpu_type else max(cards.values(), default=0)
        if res.gpu_count * request.replicas > have:
            problems.append(
                {
                    "field": "resources.gpu_count",
                    "message": f"{res.gpu_count * request.replicas} GPUs asked for, cluster "
                    f"{cluster.name!r} has {have}"
                    + ("" if have else "; use gpu_count 0 to serve on the CPU"),
                }
            )
    if "memory" in parsed:
        need = server_memory_need(settings, weights)
        if parsed["memory"]["limit"] < need:
            problems.append(
                {
                    "field": "resources.memory.limit",
                    "message": f"{res.memory.limit} is less than the {need / GiB:.1f}Gi a "
                    f"server of this model needs (weights {weights / GiB:.2f}Gi, KV-cache "
                    f"{settings.vllm_kv_cache_gib}Gi, runtime {settings.serving_overhead_gib}Gi)",
                }
            )
        wanted = parsed["memory"]["request"] * request.replicas
        free = float(cluster.memory) - memory_in_use
        if wanted <= float(cluster.memory) and wanted > free:
            problems.append(
                {
                    "field": "resources.memory.request",
                    "message": f"{wanted / GiB:.1f}Gi asked for, but other services of cluster "
                    f"{cluster.name!r} hold {memory_in_use / GiB:.1f}Gi of its "
                    f"{float(cluster.memory) / GiB:.1f}Gi",
                }
            )
    return problems


def memory_request(request: DeployRequest) -> float:
    """The memory a service's replicas request together, in bytes."""
    return float(parse_quantity(request.resources.memory.request)) * request.replicas


def engine_of(settings: Settings) -> str:
    """`vllm` or `transformers`: what serves models in this deployment."""
    if settings.serving_engine != "auto":
        return settings.serving_engine
    if settings.vllm_python is not None:
        return "vllm" if settings.vllm_python.exists() else "transformers"
    return "vllm" if importlib.util.find_spec("vllm") else "transformers"
