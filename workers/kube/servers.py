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

from tunelab.db.models import Model, ModelServer, Service
from tunelab.events.service import ServiceDeployRequested, ServicePlaced, ServiceRef
from tunelab.serving.routes import announce_change
from tunelab.serving.served import SERVED_NAME, served
from tunelab.serving_rules import DeployRequest
from tunelab.settings import Settings
from tunelab.workers.context import WorkerContext
from tunelab.workers.gpu.serving.keeper import LIVE
from tunelab.workers.gpu.serving.status import fail_service, mark_ready
from tunelab.workers.kube.client import (
    MANAGED,
    MANAGED_SELECTOR,
    SECURE,
    Kube,
    create,
    dry_run_pod,
    meta,
    object_name,
)
from tunelab.workers.kube.jobs import env_from, gpu_placement
from tunelab.workers.kube.reasons import (
    namespace_missing,
    quota_event,
    refusal,
    stuck_pod,
    transient,
)

log = logging.getLogger("tunelab.kube")

ENGINE = "kubernetes"
VLLM_PORT = 8000
SERVER_SELECTOR = f"{MANAGED_SELECTOR},app.kubernetes.io/component=model-server"


def server_name(server_id: str) -> str:
    return object_name("tl-srv", server_id)


def assign(ctx: WorkerContext, event: ServiceDeployRequested) -> None:
    """Give the service a server (an existing one with room, else a new one)."""
    with ctx.db.session() as session:
        service = session.get(Service, event.data.service_id, with_for_update=True)
        if service is None or service.status != "deploying" or service.server_id:
            return
        model = session.get(Model, service.spec["model_id"])
        if model is None:
            send = None
        else:
            what = served(model)
            shared = what.adapter_uri is not None or model.kind == "base"
            namespace = service.spec["request"]["namespace"]
            server = _with_room(ctx, session, what.server_model_uri, namespace) if shared else None
            if server is None:
                server = ModelServer(
                    model_uri=what.server_model_uri, shared=shared, engine=ENGINE, restarts=0
                )
                session.add(server)
                session.flush()
            service.server_id = server.id
            send = ctx.bus.stage(session, ServicePlaced.following(event, data=event.data))
    if send is None:
        fail_service(
            ctx, event.data.service_id, "model_missing", "The service's model was deleted."
        )
    else:
        send()


def _with_room(ctx: WorkerContext, session: Any, model_uri: str, namespace: str) -> Any:
    # Locked: a server being retired (no live service) must not be joined meanwhile.
    candidates = session.scalars(
        select(ModelServer)
        .where(
            ModelServer.engine == ENGINE,
            ModelServer.model_uri == model_uri,
            ModelServer.shared.is_(True),
        )
        .with_for_update()
    )
    for server in candidates:
        services = list(
            session.scalars(
                select(Service).where(Service.server_id == server.id, Service.status.in_(LIVE))
            )
        )
        # A server with no live service is being removed: not joined.
        if 0 < len(services) < ctx.settings.adapters_per_server and all(
            s.spec["request"]["namespace"] == namespace for s in services
        ):
            return server
    return None


def server_labels(server_id: str) -> dict[str, str]:
    return {
        **MANAGED,
        "app.kubernetes.io/component": "model-server",
        "tunelab.io/server-id": server_id,
    }


def _resources(request: DeployRequest) -> dict[str, Any]:
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
                    "resources": _resources(request),
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


def reconcile_server(ctx: WorkerContext, kube: Kube, server: ModelServer) -> None:
    with ctx.db.session() as session:
        services = list(
            session.scalars(
                select(Service).where(Service.server_id == server.id, Service.status.in_(LIVE))
            )
        )
        models = {s.id: session.get(Model, s.spec["model_id"]) for s in services}
    if not services:
        _retire(ctx, server.id)
        return
    request = DeployRequest.model_validate(services[0].spec["request"])
    namespace, name = request.namespace, server_name(server.id)
    waiting = [s for s in services if s.status == "deploying"]

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


def _waited_too_long(ctx: WorkerContext, waiting: list[Service]) -> bool:
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


def _set_server(ctx: WorkerContext, server_id: str, namespace: str, ready: bool) -> None:
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


def _retire(ctx: WorkerContext, server_id: str) -> None:
    """Forget a server no live service needs (unless a service was placed on it since this
    pass looked); `sweep` then deletes its Deployment and Service."""
    with ctx.db.session() as session:
        server = session.get(ModelServer, server_id, with_for_update=True)
        in_use = session.scalar(
            select(Service.id).where(Service.server_id == server_id, Service.status.in_(LIVE))
        )
        if server is not None and in_use is None:
            session.delete(server)


def sweep(ctx: WorkerContext, kube: Kube) -> None:
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


def replace_lost(ctx: WorkerContext) -> None:
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
                select(Service).where(Service.status == "deploying", Service.server_id.is_(None))
            )
        ]
    for event in lost:
        assign(ctx, event)


def reconcile_servers(ctx: WorkerContext, kube: Kube) -> None:
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
