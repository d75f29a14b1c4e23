"""Kubernetes refusals and pod troubles in words a user can act on."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiException

# Waiting reasons of a container that will not start by itself.
STUCK_WAITING = {
    "ErrImagePull": "its image cannot be pulled",
    "ImagePullBackOff": "its image cannot be pulled",
    "InvalidImageName": "its image name is not valid",
    "CreateContainerConfigError": "its configuration refers to something missing",
    "CreateContainerError": "its container cannot be created",
}


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def refusal(exc: ApiException, what: str, namespace: str) -> dict[str, Any]:
    """The error JSON for a request the API server refused."""
    message = api_message(exc)
    if exc.status == 403 and "exceeded quota" in message:
        return {
            "code": "quota_exceeded",
            "message": f"Namespace {namespace!r} has no room for {what}: its ResourceQuota "
            f"refuses it ({message.split('forbidden: ', 1)[-1]}). Ask for less CPU, memory "
            "or GPUs, or wait for other work there to finish.",
        }
    if exc.status == 404 and "namespaces" in message:
        return namespace_missing(namespace)
    if exc.status == 403:
        return {
            "code": "forbidden",
            "message": f"tunelab may not create {what} in namespace {namespace!r}: {message}",
        }
    return {"code": "kubernetes_error", "message": f"Kubernetes refused {what}: {message}"}


def namespace_missing(namespace: str) -> dict[str, Any]:
    return {
        "code": "namespace_missing",
        "message": f"Namespace {namespace!r} does not exist on the cluster; "
        "an administrator must create it first.",
    }


def transient(exc: ApiException) -> bool:
    """Worth asking again: the server is busy or failing, or a new namespace's default
    service account is not made yet."""
    return exc.status in (0, 429) or exc.status >= 500 or "service account" in api_message(exc)


def stuck_pod(pod: Any) -> str | None:
    """Why a pod cannot start, when it is stuck for a reason that will not pass."""
    for status in (pod.status.container_statuses or []) + (
        pod.status.init_container_statuses or []
    ):
        waiting = status.state.waiting if status.state else None
        if waiting and waiting.reason in STUCK_WAITING:
            detail = f": {waiting.message}" if waiting.message else ""
            return f"{STUCK_WAITING[waiting.reason]} ({waiting.reason}{detail})"
    return None


def quota_event(events: list[Any]) -> str | None:
    """The message of a controller's failed pod creation (a ResourceQuota said no)."""
    for event in reversed(events):
        if event.reason == "FailedCreate" and "exceeded quota" in (event.message or ""):
            return str(event.message)
    return None
