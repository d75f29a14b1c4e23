"""Kubernetes refusals and pod troubles in words a user can act on."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiException

from tunelab.quantity import parse_quantity

# Waiting reasons of a container that will not start by itself (a first ErrImagePull may
# be a registry hiccup; ImagePullBackOff is after retries).
STUCK_WAITING = {
    "ImagePullBackOff": "its image cannot be pulled",
    "CrashLoopBackOff": "it keeps crashing",
    "RunContainerError": "its container cannot run",
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
            "or GPUs than the quota's limit, or ask an administrator to raise it.",
        }
    if exc.status == 404 and "namespaces" in message:
        return namespace_missing(namespace)
    if exc.status == 403:
        return {
            "code": "forbidden",
            "message": f"tunelab may not create {what} in namespace {namespace!r}: {message}",
        }
    return {"code": "kubernetes_error", "message": f"Kubernetes refused {what}: {message}"}


def quota_never_fits(message: str) -> bool:
    """Whether a quota refusal asks for more than the quota's hard limit (it will never
    fit) rather than more than is free right now ("requested: limits.cpu=4, used:
    limits.cpu=2, limited: limits.cpu=4")."""

    def amounts(label: str) -> dict[str, float]:
        section = message.split(f"{label}: ", 1)[-1].split(", used:")[0].split(", limited:")[0]
        found = {}
        for part in section.split(","):
            name, _, value = part.strip().partition("=")
            try:
                found[name] = float(parse_quantity(value))
            except ValueError:
                continue
        return found

    requested, limited = amounts("requested"), amounts("limited")
    return any(requested[k] > limited[k] for k in requested.keys() & limited.keys())


def namespace_missing(namespace: str) -> dict[str, Any]:
    return {
        "code": "namespace_missing",
        "message": f"Namespace {namespace!r} does not exist on the cluster; "
        "an administrator must create it first.",
    }


def transient(exc: ApiException) -> bool:
    """Worth asking again: the server is busy or failing, or a new namespace's default
    service account is not made yet."""
    message = api_message(exc)
    if exc.status == 403 and "exceeded quota" in message:
        return not quota_never_fits(message)  # it fits once other work finishes
    return exc.status in (0, 429) or exc.status >= 500 or "service account" in message


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
