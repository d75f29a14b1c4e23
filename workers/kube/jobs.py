"""Training tasks as Kubernetes Jobs.

The Job's pod runs `tunelab train-task ID`, which trains exactly as a local GPU worker
does (torchrun over the pod's GPUs when it has several) and publishes progress and the
outcome as events itself. Kubernetes retries a pod that died of a fault (`backoffLimit`);
a failure of the user's data or parameters exits with EXIT_USER_ERROR, which the Job's
`podFailurePolicy` does not retry, and an evicted or preempted pod is not counted
against the retries. Servers older than 1.26 drop `podFailurePolicy`; the reconciler
then ends the task when its pod exits with EXIT_USER_ERROR all the same.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiException

from tunelab.clusters import CPU_TYPE
from tunelab.db.tables import Experiment, Task
from tunelab.lifecycle.specs import TaskNeeds, TaskResources
from tunelab.settings import Settings
from tunelab.training.exits import EXIT_USER_ERROR
from tunelab.workers.kube.client import (
    MANAGED,
    SECURE,
    Kube,
    create,
    dry_run_pod,
    object_name,
)
from tunelab.workers.kube.reasons import namespace_missing, refusal, transient

"""Exit code of a training pod whose task failed for its data or parameters: a retry
would fail the same way."""
CONTAINER = "train"


def job_name(task_id: str) -> str:
    return object_name("tl-train", task_id)


def env_from(settings: Settings) -> list[dict[str, Any]]:
    sources = []
    for name in filter(None, (n.strip() for n in settings.kube_env_from.split(","))):
        ref = "secretRef" if name.endswith("-secrets") else "configMapRef"
        sources.append({ref: {"name": name}})
    return sources


def gpu_placement(settings: Settings, gpus: int) -> dict[str, Any]:
    """Node selector and toleration of a pod that asks for GPUs (none for CPU pods)."""
    if not gpus:
        return {}
    selector = dict(
        pair.split("=", 1) for pair in settings.kube_gpu_node_selector.split(",") if "=" in pair
    )
    return {
        "nodeSelector": selector,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


def resources_of(resources: TaskResources, gpus: int) -> dict[str, Any]:
    cpu, memory = resources.cpu, resources.memory
    requests = {"cpu": str(cpu.request), "memory": str(memory.request)}
    limits = {"cpu": str(cpu.limit), "memory": str(memory.limit)}
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": requests, "limits": limits}


def job_manifest(settings: Settings, task: Task, experiment: Experiment) -> dict[str, Any]:
    spec = TaskNeeds.of(task)
    gpus = 0 if spec.compute.gpu_type == CPU_TYPE else spec.compute.gpu_count
    labels = {
        **MANAGED,
        "app.kubernetes.io/component": "training",
        "tunelab.io/task-id": task.id.lower(),
        "tunelab.io/experiment": experiment.name,
        "tunelab.io/task": task.name,
    }
    env = [
        {"name": "TUNELAB_BACKEND", "value": "local"},  # inside the pod it trains itself
        {"name": "TUNELAB_MODEL_CACHE", "value": "/cache/models"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": "/cache/torch_extensions"},
    ]
    if not gpus:
        env.append({"name": "CUDA_VISIBLE_DEVICES", "value": ""})
    pod = {
        "metadata": {"labels": labels},
        "spec": {
            "restartPolicy": "Never",  # a failed pod is replaced by the Job, not restarted
            "automountServiceAccountToken": False,  # training needs no Kubernetes API
            "containers": [
                {
                    "name": CONTAINER,
                    "image": settings.kube_image,
                    "command": ["tunelab", "train-task", task.id],
                    "env": env,
                    "envFrom": env_from(settings),
                    "resources": resources_of(spec.resources, gpus),
                    "securityContext": SECURE,
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": "/tmp"},
                        {"name": "cache", "mountPath": "/cache"},
                        # torchrun's ranks share tensors through /dev/shm, 64 MiB by default.
                        {"name": "shm", "mountPath": "/dev/shm"},
                    ],
                }
            ],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "cache", "emptyDir": {}},
                {"name": "shm", "emptyDir": {"medium": "Memory"}},
            ],
            **gpu_placement(settings, gpus),
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(task.id), "labels": labels},
        "spec": {
            "backoffLimit": settings.kube_backoff_limit,
            "activeDeadlineSeconds": settings.train_time_limit_s,
            "ttlSecondsAfterFinished": 24 * 3600,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [EXIT_USER_ERROR],
                        },
                    },
                    # Evicted, preempted or its node lost: not the task's fault.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": pod,
        },
    }


def submit(kube: Kube, namespace: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Create the Job; None when it exists (or now does), else the reason it cannot.
    Its pod is dry-run first, so a quota's refusal is told now, not as a Job without pods.
    """
    what = f"training task {manifest['metadata']['labels']['tunelab.io/task']!r}"
    try:
        kube.core.read_namespace(namespace)
    except ApiException as exc:
        if exc.status == 404:
            return namespace_missing(namespace)
        raise
    try:
        dry_run_pod(kube, namespace, manifest)
        create(kube.batch.create_namespaced_job, namespace, manifest)
    except ApiException as exc:
        if exc.status == 409:
            return None  # a redelivery: the Job is there already
        if transient(exc):
            raise  # retried: the API is busy, or a quota has room once other work ends
        return refusal(exc, what, namespace)
    return None


def delete(kube: Kube, namespace: str, task_id: str) -> None:
    """Delete the task's Job and its pods (gone already is fine)."""
    try:
        kube.batch.delete_namespaced_job(
            job_name(task_id), namespace, propagation_policy="Background", _preload_content=False
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
