"""The official Kubernetes client, configured once per process from settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kubernetes import client, config

from tunelab.settings import Settings

MANAGED = {"app.kubernetes.io/managed-by": "tunelab"}
"""Labels on everything tunelab creates; the reconciler lists objects by them."""
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=tunelab"


@dataclass(frozen=True)
class Kube:
    core: client.CoreV1Api
    batch: client.BatchV1Api
    apps: client.AppsV1Api


@lru_cache(maxsize=4)
def _connect(kubeconfig: str | None) -> Kube:
    configuration = client.Configuration()
    # The config loaders are the client's only untyped calls.
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    api = client.ApiClient(configuration)
    return Kube(client.CoreV1Api(api), client.BatchV1Api(api), client.AppsV1Api(api))


def kube(settings: Settings) -> Kube:
    return _connect(str(settings.kube_config) if settings.kube_config else None)


def create(call: Callable[..., Any], namespace: str, manifest: dict[str, Any], **kw: Any) -> Any:
    """`call(namespace, manifest)`: the client takes plain manifests as well as its models
    (its type hints name only the models)."""
    return call(namespace, manifest, **kw)


def dry_run_pod(kube: Kube, namespace: str, manifest: dict[str, Any]) -> None:
    """Create a pod of the workload's template as a server-side dry run: admission (a
    ResourceQuota, a policy) refuses it now, with its reason, if it would refuse the
    workload's pods later. Raises ApiException."""
    template = manifest["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": manifest["metadata"]["name"], **template["metadata"]},
        "spec": template["spec"],
    }
    create(kube.core.create_namespaced_pod, namespace, pod, dry_run="All")


def meta(obj: Any) -> tuple[str, str, dict[str, str]]:
    """An object's name, namespace and labels (always set on what the server returns)."""
    return obj.metadata.name, obj.metadata.namespace, obj.metadata.labels or {}


SECURE = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
"""securityContext of every container tunelab creates."""


def object_name(prefix: str, resource_id: str) -> str:
    """A DNS-1123 name for the object of a tunelab id (`tsk_3f…` → `tl-train-tsk-3f…`)."""
    return f"{prefix}-{resource_id.lower().replace('_', '-')}"[:63].rstrip("-")
