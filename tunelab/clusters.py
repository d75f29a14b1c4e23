"""Clusters the operator declares: names, namespaces, and what each one has in total.

Read from a TOML file (TUNELAB_CLUSTERS_FILE):

    [clusters.gpu-a]
    namespaces = ["default", "research"]
    cpu = "64"
    memory = "512Gi"
    gpus = { a100 = 8, h100 = 8 }

Without one there is a single `local` cluster, namespace `default`, whose inventory is
this machine; its GPU type `cpu` with 0 cards means tasks train on the CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from tunelab.quantity import parse_quantity
from tunelab.settings import Settings

CPU_TYPE = "cpu"
"""The GPU type meaning "no GPU": a task's gpu_count is then its number of processes."""


@dataclass(frozen=True)
class Cluster:
    name: str
    namespaces: tuple[str, ...]
    cpu: Decimal
    memory: Decimal
    gpus: dict[str, int] = field(default_factory=dict)


def _this_machine() -> Cluster:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Cluster(
        name="local",
        namespaces=("default",),
        cpu=Decimal(os.cpu_count() or 1),
        memory=Decimal(pages),
        gpus={CPU_TYPE: 0, **_local_gpus()},
    )


def _local_gpus() -> dict[str, int]:
    """This machine's GPUs, named by the first card's type, as nvidia-smi reports them
    (not torch: the API process, which lists clusters, has no torch)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    try:
        listed = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    names = [line.strip() for line in listed.splitlines() if line.strip()]
    if not names:
        return {}
    return {names[0].lower().replace("nvidia ", "").split()[0]: len(names)}


@lru_cache(maxsize=4)
def _load(path: Path | None) -> dict[str, Cluster]:
    if path is None:
        return {"local": _this_machine()}
    raw = tomllib.loads(path.read_text("utf-8"))
    clusters = {}
    for name, spec in raw.get("clusters", {}).items():
        clusters[name] = Cluster(
            name=name,
            namespaces=tuple(spec.get("namespaces", ["default"])),
            cpu=parse_quantity(spec["cpu"]),
            memory=parse_quantity(spec["memory"]),
            gpus={CPU_TYPE: 0, **{k: int(v) for k, v in spec.get("gpus", {}).items()}},
        )
    return clusters


def clusters(settings: Settings) -> dict[str, Cluster]:
    return _load(settings.clusters_file)


def placement_problems(settings: Settings, cluster: str, namespace: str) -> list[str]:
    """Why `cluster`/`namespace` cannot be used (empty when it can)."""
    known = clusters(settings)
    if cluster not in known:
        return [f"no cluster {cluster!r}; clusters: {sorted(known)}"]
    if namespace not in known[cluster].namespaces:
        return [
            f"cluster {cluster!r} has no namespace {namespace!r}; it has "
            f"{list(known[cluster].namespaces)}"
        ]
    return []
