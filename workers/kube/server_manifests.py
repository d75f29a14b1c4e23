"""What a model server is on Kubernetes: a Deployment of vLLM pods, each with an
`adapters` sidecar (`tunelab adapter-agent`) that loads the server's adapters, and a
Service in front of them."""

from __future__ import annotations

from typing import Any

from tunelab.serving.served import SERVED_NAME
from tunelab.serving_rules import DeployRequest
from tunelab.settings import Settings
from tunelab.workers.kube.client import MANAGED, MANAGED_SELECTOR, SECURE, object_name
from tunelab.workers.kube.jobs import env_from, gpu_placement

VLLM_PORT = 8000
SERVER_SELECTOR = f"{MANAGED_SELECTOR},app.kubernetes.io/component=model-server"


def server_name(server_id: str) -> str:
    return object_name("tl-srv", server_id)


def server_labels(server_id: str) -> dict[str, str]:
    return {
        **MANAGED,
        "app.kubernetes.io/component": "model-server",
        "tunelab.io/server-id": server_id,
    }


def container_resources(request: DeployRequest) -> dict[str, Any]:
    res = request.resources
    requests = {"cpu": str(res.cpu.request), "memory": str(res.memory.request)}
    limits = {"cpu": str(res.cpu.limit), "memory": str(res.memory.limit)}
    if res.gpu_count:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(res.gpu_count)
    return {"requests": requests, "limits": limits}


def deployment_manifest(
    settings: Settings, server_id: str, model_uri: str, request: DeployRequest
) -> dict[str, Any]:
    labels = server_labels(server_id)
    shared_env = [{"name": "TUNELAB_MODEL_CACHE", "value": "/models/cache"}]
    vllm_args = [
        "--model", "/models/base",
        "--served-model-name", SERVED_NAME,
        "--port", str(VLLM_PORT),
        "--enable-lora",
        "--max-lora-rank", str(settings.vllm_max_lora_rank),
        "--max-loras", str(settings.adapters_per_server),
    ]  # fmt: skip
    pod = {
        "metadata": {"labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "initContainers": [
                {
                    "name": "fetch-model",
                    "image": settings.kube_image,
                    "command": ["tunelab", "fetch-model", model_uri, "/models/base"],
                    "env": shared_env,
                    "envFrom": env_from(settings),
                    "securityContext": SECURE,
                    "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                }
            ],
            "containers": [
                {
                    "name": "vllm",
                    "image": settings.kube_vllm_image,
                    "args": vllm_args,
                    # Adapters are loaded and unloaded at run time by the sidecar.
                    "env": [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}],
                    "ports": [{"name": "http", "containerPort": VLLM_PORT}],
                    "resources": container_resources(request),
                    "securityContext": SECURE,
                    "readinessProbe": {
                        "httpGet": {"path": "/health", "port": VLLM_PORT},
                        "periodSeconds": 5,
                    },
                    "volumeMounts": [
                        {"name": "models", "mountPath": "/models", "readOnly": True},
                        {"name": "shm", "mountPath": "/dev/shm"},
                    ],
                },
                {
                    "name": "adapters",
                    "image": settings.kube_image,
                    "command": ["tunelab", "adapter-agent", server_id],
                    "env": [
                        *shared_env,
                        {"name": "TUNELAB_AGENT_PORT", "value": str(settings.kube_agent_port)},
                    ],
                    "envFrom": env_from(settings),
                    "ports": [{"name": "adapters", "containerPort": settings.kube_agent_port}],
                    # Not ready until the registry's adapters are in this replica's vLLM:
                    # the Service sends requests only to replicas that can answer them.
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": settings.kube_agent_port},
                        "periodSeconds": 2,
                    },
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                    "securityContext": SECURE,
                    "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                },
            ],
            "volumes": [
                {"name": "models", "emptyDir": {}},
                {"name": "shm", "emptyDir": {"medium": "Memory"}},
            ],
            **gpu_placement(settings, request.resources.gpu_count),
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": server_name(server_id), "labels": labels},
        "spec": {
            "replicas": request.replicas,
            "selector": {"matchLabels": {"tunelab.io/server-id": server_id}},
            "template": pod,
        },
    }


def service_manifest(server_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": server_name(server_id), "labels": server_labels(server_id)},
        "spec": {
            "selector": {"tunelab.io/server-id": server_id},
            "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": VLLM_PORT}],
        },
    }
