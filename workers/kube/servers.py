"""Model servers as Deployments + Services running vLLM with LoRA enabled.

A LoRA service joins a server of its base model in its namespace (up to
TUNELAB_ADAPTERS_PER_SERVER); a base model's own service joins one too; a fully
fine-tuned model gets a server of its own. Each server pod carries an `adapters`
sidecar (`tunelab adapter-agent`) that loads every adapter of the registry into its own
vLLM and again whenever that vLLM restarts, so replicas added later or restarted come
up with the same adapters. The reconciler marks a service ready once every ready
replica reports its adapter loaded.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from kubernetes.client import ApiException
from sqlalchemy import select

from tunelab.context import Context
from tunelab.db.tables import Model, ModelServer, Service
from tunelab.events.service import ServiceDeployRequested, ServiceRef
from tunelab.lifecycle.services import assign as place
from tunelab.lifecycle.services import fail_service, mark_ready
from tunelab.lifecycle.specs import ServiceSpec
from tunelab.lifecycle.states import SERVICE_LIVE, ServiceState
from tunelab.serving.routes import announce_change
from tunelab.serving.served import served
from tunelab.settings import Settings
from tunelab.workers.kube.client import (
    Kube,
    create,
    dry_run_pod,
    meta,
)
from tunelab.workers.kube.reasons import (
    namespace_missing,
    quota_event,
    refusal,
    stuck_pod,
    transient,
)
from tunelab.workers.kube.server_manifests import (
    SERVER_SELECTOR,
    VLLM_PORT,
    deployment_manifest,
    server_name,
    service_manifest,
)

log = logging.getLogger("tunelab.kube")

ENGINE = "kubernetes"


def assign(ctx: Context, event: ServiceDeployRequested) -> None:
    """Give the service a server by the placement rule (tunelab.lifecycle.services)."""
    place(ctx, event, ENGINE)


def _ensure(kube: Kube, namespace: str, manifest: dict[str, Any], service: dict[str, Any]) -> None:
    """Create the Deployment and Service unless they exist; the Deployment's pod is
    dry-run first, so a quota's refusal is told now, not as a Deployment without pods."""
    name = manifest["metadata"]["name"]
    try:
        kube.apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        dry_run_pod(kube, namespace, manifest)
        _create_once(kube.apps.create_namespaced_deployment, namespace, manifest)
    try:
        kube.core.read_namespaced_service(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        _create_once(kube.core.create_namespaced_service, namespace, service)


def _create_once(call: Any, namespace: str, manifest: dict[str, Any]) -> None:
    try:
        create(call, namespace, manifest)
    except ApiException as exc:
        if exc.status != 409:  # made meanwhile by an earlier pass: the same object
            raise


def remove(kube: Kube, namespace: str, server_id: str) -> None:
    name = server_name(server_id)
    for call in (kube.apps.delete_namespaced_deployment, kube.core.delete_namespaced_service):
        try:
            # Not parsed: older servers answer a Service's DELETE with a Status object,
            # which this client's models do not take.
            call(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise


def ready_pods(pods: list[Any]) -> list[Any]:
    return [
        pod
        for pod in pods
        if pod.status.pod_ip
        and not pod.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    ]


def loaded_on(settings: Settings, pod: Any) -> set[str]:
    """Service ids whose adapters the pod's sidecar reports loaded (none if it cannot
    be asked right now)."""
    try:
        reply = httpx.get(
            f"http://{pod.status.pod_ip}:{settings.kube_agent_port}/adapters", timeout=5
        )
        return set(reply.json()["loaded"])
    except (httpx.HTTPError, ValueError, KeyError):
        return set()


def reconcile_server(ctx: Context, kube: Kube, server: ModelServer) -> None:
    with ctx.db.session() as session:
        services = list(
            session.scalars(
                select(Service).where(
                    Service.server_id == server.id, Service.status.in_(SERVICE_LIVE)
                )
            )
        )
        models = {s.id: session.get(Model, ServiceSpec.of(s).model_id) for s in services}
    if not services:
        _retire(ctx, server.id)
        return
    request = ServiceSpec.of(services[0]).request
    namespace, name = request.namespace, server_name(server.id)
    waiting = [s for s in services if s.status == ServiceState.DEPLOYING]

    def fail_waiting(code: str, message: str) -> None:
        # Ready services keep serving from the replicas that work; only those still
        # waiting for their first ready replica are told it will not come.
        for service in waiting:
            fail_service(ctx, service.id, code, message)

    manifest = deployment_manifest(ctx.settings, server.id, server.model_uri, request)
    try:
        kube.core.read_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        fail_waiting(**namespace_missing(namespace))
        return
    try:
        _ensure(kube, namespace, manifest, service_manifest(server.id))
    except ApiException as exc:
        if transient(exc):
            raise  # the next pass tries again
        fail_waiting(**refusal(exc, f"the model server of {services[0].name!r}", namespace))
        return
    pods = kube.core.list_namespaced_pod(
        namespace, label_selector=f"tunelab.io/server-id={server.id}"
    ).items
    ready = ready_pods(pods)
    _set_server(ctx, server.id, namespace, bool(ready))
    if waiting and not ready:
        trouble = _start_trouble(kube, namespace, name, pods)
        if trouble is None and _waited_too_long(ctx, waiting):
            trouble = (
                "start_timeout",
                "No replica of the model server became ready in "
                f"{ctx.settings.kube_start_timeout_s:.0f} s{_unscheduled(pods)}.",
            )
        if trouble:
            fail_waiting(*trouble)
        return
    reports = [loaded_on(ctx.settings, pod) for pod in ready]
    for service in waiting:
        model = models[service.id]
        adapter = model is not None and served(model).adapter_uri
        if not adapter or all(service.id in report for report in reports):
            mark_ready(ctx, service.id)


def _start_trouble(
    kube: Kube, namespace: str, name: str, pods: list[Any]
) -> tuple[str, str] | None:
    for pod in pods:
        stuck = stuck_pod(pod)
        if stuck:
            return "server_cannot_start", f"The model server cannot start: {stuck}."
    if not pods:
        events = kube.core.list_namespaced_event(namespace).items
        mine = [e for e in events if (e.involved_object.name or "").startswith(name)]
        refused = quota_event(mine)
        if refused:
            return "quota_exceeded", f"Kubernetes will not create the server's pods: {refused}"
    return None


def _waited_too_long(ctx: Context, waiting: list[Service]) -> bool:
    oldest = min(s.created_at for s in waiting)
    oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
    return datetime.now(UTC) - oldest > timedelta(seconds=ctx.settings.kube_start_timeout_s)


def _unscheduled(pods: list[Any]) -> str:
    """The scheduler's word on a pod it could not place, if any."""
    for pod in pods:
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return f": {condition.message or condition.reason}"
    return ""


def _set_server(ctx: Context, server_id: str, namespace: str, ready: bool) -> None:
    with ctx.db.session() as session:
        server = session.get(ModelServer, server_id)
        if server is None:
            return
        status = "ready" if ready else "starting"
        url = ctx.settings.kube_server_url.format(
            name=server_name(server_id), namespace=namespace, port=VLLM_PORT
        )
        if (server.status, server.url) == (status, url):
            return
        server.status, server.url = status, url
    announce_change(ctx.bus.redis)


def _retire(ctx: Context, server_id: str) -> None:
    """Forget a server no live service needs (unless a service was placed on it since this
    pass looked); `sweep` then deletes its Deployment and Service."""
    with ctx.db.session() as session:
        server = session.get(ModelServer, server_id, with_for_update=True)
        in_use = session.scalar(
            select(Service.id).where(
                Service.server_id == server_id, Service.status.in_(SERVICE_LIVE)
            )
        )
        if server is not None and in_use is None:
            session.delete(server)


def sweep(ctx: Context, kube: Kube) -> None:
    """Delete model-server Deployments and Services whose server is no longer in the
    database (its services were deleted or failed): they would hold GPUs for nothing."""
    with ctx.db.session() as session:
        known = set(session.scalars(select(ModelServer.id)))
    found: list[Any] = [
        *kube.apps.list_deployment_for_all_namespaces(label_selector=SERVER_SELECTOR).items,
        *kube.core.list_service_for_all_namespaces(label_selector=SERVER_SELECTOR).items,
    ]
    for obj in found:
        _, namespace, labels = meta(obj)
        server_id = labels.get("tunelab.io/server-id", "")
        if server_id and server_id not in known:
            log.info("removing model server %s from %s", server_id, namespace)
            remove(kube, namespace, server_id)


def replace_lost(ctx: Context) -> None:
    """A deploying service left without a server (its server was retired while it was
    being placed) is placed again."""
    with ctx.db.session() as session:
        lost = [
            ServiceDeployRequested(
                workspace=s.workspace_id,
                subject=f"services/{s.name}",
                data=ServiceRef(service_id=s.id, name=s.name, model=s.model),
            )
            for s in session.scalars(
                select(Service).where(
                    Service.status == ServiceState.DEPLOYING, Service.server_id.is_(None)
                )
            )
        ]
    for event in lost:
        assign(ctx, event)


def reconcile_servers(ctx: Context, kube: Kube) -> None:
    replace_lost(ctx)
    with ctx.db.session() as session:
        servers = list(session.scalars(select(ModelServer).where(ModelServer.engine == ENGINE)))
        session.expunge_all()
    for server in servers:
        try:
            reconcile_server(ctx, kube, server)
        except Exception:
            log.exception("reconciling model server %s failed", server.id)
    sweep(ctx, kube)
