"""The Kubernetes backend against a real API server (1.20, with its controller manager,
no kubelet): the Jobs and Deployments it creates, refusals turned into readable
failures, cancel, and adapters loaded on every ready replica. Where a kubelet would act,
the test patches status as the kubelet would, and runs the server pod's containers (a
model server with vLLM's API and the adapter sidecar) as local processes."""

from __future__ import annotations

import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes.client import ApiException
from sqlalchemy import select

from tests.services import free_port
from tunelab.context import Context
from tunelab.db import Database
from tunelab.db.tables import EventRecord, Experiment, Model, Service, Task, Workspace
from tunelab.events.broker import queue_name
from tunelab.events.bus import EventBus
from tunelab.events.experiment import ExperimentCancelled, ExperimentRef
from tunelab.events.service import ServiceDeployRequested, ServiceRef
from tunelab.settings import Settings
from tunelab.store.local import LocalStore
from tunelab.training.exits import EXIT_USER_ERROR
from tunelab.workers import context
from tunelab.workers.kube import jobs, server_manifests, servers
from tunelab.workers.kube.client import Kube, kube

IMAGE = "registry.example/tunelab:gpu"


@pytest.fixture
def ctx(stub_broker: Any, tmp_path: Path, kubeconfig: str) -> Iterator[Context]:
    settings = Settings(
        data_dir=tmp_path,
        backend="kubernetes",
        kube_config=Path(kubeconfig),
        kube_image=IMAGE,
        kube_agent_port=free_port(),
        kube_backoff_limit=0,
        model_cache=Path(os.environ["TUNELAB_MODEL_CACHE"]),  # the tiny model, built once
    )
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    db.migrate()
    bus = EventBus(stub_broker, db, lambda worker: queue_name(settings, worker), "kubernetes")
    worker_context = Context(settings, db, LocalStore(tmp_path / "objects"), bus)
    context.install(worker_context)
    yield worker_context
    stub_broker.flush_all()
    db.dispose()


@pytest.fixture
def api(ctx: Context) -> Kube:
    return kube(ctx.settings)


@pytest.fixture
def namespace(api: Kube) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    api.core.create_namespace({"metadata": {"name": name}})
    # Pods need the namespace's default service account, which a controller makes.
    wait_for(
        "the default service account", lambda: api.core.list_namespaced_service_account(name).items
    )
    yield name
    api.core.delete_namespace(name)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def workspace(ctx: Context) -> str:
    with ctx.db.session() as session:
        found = session.scalar(select(Workspace))
        if found is None:
            found = Workspace(name="acme")
            session.add(found)
            session.flush()
        return found.id


def add_task(
    ctx: Context, namespace: str, gpu_type: str = "cpu", gpus: int = 1, cpu: str = "2"
) -> Task:
    ws = workspace(ctx)
    with ctx.db.session() as session:
        experiment = Experiment(
            workspace_id=ws,
            name=f"exp-{secrets.token_hex(3)}",
            status="running",
            spec={"cluster": "local", "namespace": namespace, "evaluation": "exact-match"},
        )
        session.add(experiment)
        session.flush()
        task = Task(
            workspace_id=ws,
            experiment_id=experiment.id,
            name="adapter",
            position=0,
            cluster="local",
            status="training",
            started_at=datetime.now(UTC),
            spec={
                "compute": {"gpu_type": gpu_type, "gpu_count": gpus},
                "resources": {
                    "cpu": {"request": cpu, "limit": str(int(cpu) * 2)},
                    "memory": {"request": "8Gi", "limit": "16Gi"},
                },
            },
        )
        session.add(task)
        session.flush()
        session.expunge_all()
        return task


def submit(ctx: Context, task: Task) -> None:
    from tunelab.lifecycle.tasks import scheduled_event
    from tunelab.workers.kube.actors import submit_task_job

    with ctx.db.session() as session:
        event = scheduled_event(
            session.get(Task, task.id), session.get(Experiment, task.experiment_id)
        )
    submit_task_job(event)


def task_row(ctx: Context, task_id: str) -> Task:
    with ctx.db.session() as session:
        found = session.get(Task, task_id)
        assert found is not None
        session.expunge(found)
        return found


def event_types(ctx: Context) -> list[str]:
    with ctx.db.session() as session:
        return list(session.scalars(select(EventRecord.type).order_by(EventRecord.seq)))


def pods_of(api: Kube, namespace: str, selector: str) -> list[Any]:
    return list(api.core.list_namespaced_pod(namespace, label_selector=selector).items)


def test_a_task_becomes_a_job_with_its_resources_gpus_env_volumes_and_failure_policy(
    ctx: Context, api: Kube, namespace: str
) -> None:
    task = add_task(ctx, namespace, gpu_type="a100", gpus=2, cpu="4")
    submit(ctx, task)
    job = api.batch.read_namespaced_job(jobs.job_name(task.id), namespace)
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.image == IMAGE
    assert container.command == ["tunelab", "train-task", task.id]
    assert container.resources.requests == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2"}
    assert container.resources.limits == {"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert [(e.config_map_ref or e.secret_ref).name for e in container.env_from] == [
        "tunelab-config",
        "tunelab-secrets",
    ]
    assert {e.name: e.value for e in container.env}["TUNELAB_BACKEND"] == "local"
    assert {v.name for v in pod.volumes} == {"scratch", "cache", "shm"}
    assert pod.volumes[2].empty_dir.medium == "Memory"
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"
    assert (
        pod.restart_policy == "Never" and job.spec.backoff_limit == ctx.settings.kube_backoff_limit
    )
    assert job.metadata.labels["tunelab.io/task-id"] == task.id
    # A 1.20 server drops podFailurePolicy (it arrived in 1.25): what is sent is checked
    # here, and the reconciler enforces the same rule itself (see the test below).
    with ctx.db.session() as session:
        sent = jobs.job_manifest(
            ctx.settings, session.get(Task, task.id), session.get(Experiment, task.experiment_id)
        )
    rules = sent["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [EXIT_USER_ERROR]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    # The Job controller makes its pod, which waits for a kubelet.
    wait_for("the Job's pod", lambda: pods_of(api, namespace, f"job-name={job.metadata.name}"))
    submit(ctx, task)  # a redelivery changes nothing
    assert task_row(ctx, task.id).status == "training"


def test_a_task_without_a_gpu_asks_for_none_and_sees_none(
    ctx: Context, api: Kube, namespace: str
) -> None:
    task = add_task(ctx, namespace)
    submit(ctx, task)
    job = api.batch.read_namespaced_job(jobs.job_name(task.id), namespace)
    (container,) = job.spec.template.spec.containers
    assert "nvidia.com/gpu" not in container.resources.limits
    env = {e.name: e.value for e in container.env}
    assert "CUDA_VISIBLE_DEVICES" in env and not env["CUDA_VISIBLE_DEVICES"]  # set, empty
    assert job.spec.template.spec.node_selector is None


def test_a_quota_that_refuses_the_pod_fails_the_task_with_kubernetes_reason(
    ctx: Context, api: Kube, namespace: str
) -> None:
    api.core.create_namespaced_resource_quota(
        namespace,
        {
            "metadata": {"name": "small"},
            "spec": {"hard": {"limits.cpu": "2", "limits.memory": "4Gi"}},
        },
    )
    wait_for(
        "the quota's usage",
        lambda: api.core.read_namespaced_resource_quota("small", namespace).status.used,
    )
    task = add_task(ctx, namespace, cpu="2")
    submit(ctx, task)
    failed = task_row(ctx, task.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["code"] == "quota_exceeded"
    message = failed.error["message"]
    assert namespace in message and "ResourceQuota" in message and "limits.cpu" in message
    with pytest.raises(ApiException) as missing:
        api.batch.read_namespaced_job(jobs.job_name(task.id), namespace)
    assert missing.value.status == 404
    assert "task.failed" in event_types(ctx)


def test_a_namespace_that_does_not_exist_fails_the_task_saying_so(ctx: Context) -> None:
    task = add_task(ctx, "nowhere-at-all")
    submit(ctx, task)
    error = task_row(ctx, task.id).error
    assert error is not None and error["code"] == "namespace_missing"
    assert "'nowhere-at-all' does not exist" in error["message"]


def test_cancel_deletes_the_job_and_announces_the_task_cancelled(
    ctx: Context, api: Kube, namespace: str
) -> None:
    from tunelab.workers.kube.actors import delete_cancelled_jobs

    task = add_task(ctx, namespace)
    submit(ctx, task)
    with ctx.db.session() as session:
        row = session.get(Task, task.id)
        experiment = session.get(Experiment, task.experiment_id)
        assert row is not None and experiment is not None
        row.status = experiment.status = "cancelled"
        event = ExperimentCancelled(
            workspace=experiment.workspace_id,
            subject=f"experiments/{experiment.name}",
            data=ExperimentRef(experiment_id=experiment.id, name=experiment.name),
        )
    delete_cancelled_jobs(event)

    def gone() -> bool:
        try:
            api.batch.read_namespaced_job(jobs.job_name(task.id), namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the Job to be deleted", gone)
    assert "task.cancelled" in event_types(ctx)


def patch_pod_status(api: Kube, pod: Any, status: dict[str, Any]) -> None:
    api.core.patch_namespaced_pod_status(
        pod.metadata.name, pod.metadata.namespace, {"status": status}
    )


def train_container(phase: str, state: dict[str, Any]) -> dict[str, Any]:
    """Pod status with the training container in `state`, as a kubelet reports it."""
    container = {"name": "train", "image": IMAGE, "imageID": "", "ready": False}
    return {"phase": phase, "containerStatuses": [{**container, "restartCount": 0, "state": state}]}


def terminated(code: int, reason: str) -> dict[str, Any]:
    return train_container("Failed", {"terminated": {"exitCode": code, "reason": reason}})


def test_a_pod_that_cannot_pull_its_image_fails_the_task(
    ctx: Context, api: Kube, namespace: str
) -> None:
    from tunelab.workers.kube.training import reconcile_jobs

    task = add_task(ctx, namespace)
    submit(ctx, task)
    name = jobs.job_name(task.id)
    (pod,) = wait_for("the Job's pod", lambda: pods_of(api, namespace, f"job-name={name}"))
    waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{IMAGE}"'}
    patch_pod_status(api, pod, train_container("Pending", {"waiting": waiting}))
    reconcile_jobs(ctx, api)
    error = task_row(ctx, task.id).error
    assert error is not None and error["code"] == "pod_cannot_start"
    assert "image cannot be pulled" in error["message"] and IMAGE in error["message"]


def test_a_job_that_kept_failing_or_a_user_error_exit_ends_the_task_without_more_pods(
    ctx: Context, api: Kube, namespace: str
) -> None:
    from tunelab.workers.kube.training import reconcile_jobs

    crashing = add_task(ctx, namespace)
    submit(ctx, crashing)
    name = jobs.job_name(crashing.id)
    (pod,) = wait_for("the Job's pod", lambda: pods_of(api, namespace, f"job-name={name}"))
    # The pod dies of a fault; with no retries left (the fixture's backoff limit is 0)
    # the Job controller itself marks the Job failed.
    patch_pod_status(api, pod, terminated(1, "OOMKilled"))

    def job_failed() -> bool:
        job = api.batch.read_namespaced_job(name, namespace)
        return any(c.type == "Failed" for c in job.status.conditions or [])

    wait_for("the Job controller to fail the Job", job_failed, 60)
    # On a 1.20 server nothing stops a pod that exited with EXIT_USER_ERROR from being
    # retried: the reconciler deletes its Job (the pod already failed the task).
    user_error = add_task(ctx, namespace)
    submit(ctx, user_error)
    name = jobs.job_name(user_error.id)
    (pod,) = wait_for("the Job's pod", lambda: pods_of(api, namespace, f"job-name={name}"))
    patch_pod_status(api, pod, terminated(EXIT_USER_ERROR, "Error"))
    reconcile_jobs(ctx, api)
    error = task_row(ctx, user_error.id).error
    assert error is not None and error["code"] == "invalid_task"
    error = task_row(ctx, crashing.id).error
    assert error is not None and error["code"] == "training_crashed"
    assert "1 attempt(s)" in error["message"] and "exit code 1 (OOMKilled)" in error["message"]
    with pytest.raises(ApiException):
        api.batch.read_namespaced_job(name, namespace)


# ---- model servers ------------------------------------------------------------------


def adapter_model(ctx: Context, base_uri: str, base_dir: Path) -> Model:
    """A LoRA adapter of the tiny base model, in the object store like a trained one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = ctx.settings.data_dir / "adapter"
    with warnings.catch_warnings():  # peft still asks transformers a deprecated question
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base_dir),
            LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        )
    model.save_pretrained(folder)
    prefix = "models/adapter-1/"
    for path in folder.iterdir():
        ctx.store.put_bytes(prefix + path.name, path.read_bytes())
    with ctx.db.session() as session:
        found = Model(
            workspace_id=workspace(ctx),
            name="tuned",
            kind="finetuned",
            uri=ctx.store.uri(prefix),
            spec={"adapter": True, "base_model": "tiny-llama", "base_model_uri": base_uri},
        )
        session.add(found)
        session.flush()
        session.expunge(found)
        return found


def add_service(ctx: Context, name: str, model: Model, namespace: str) -> str:
    from tunelab.workers.kube.actors import deploy_service_on_kubernetes

    request = {
        "name": name,
        "model": model.name,
        "cluster": "local",
        "namespace": namespace,
        "replicas": 2,
        "resources": {
            "gpu_count": 1,
            "cpu": {"request": "2", "limit": "4"},
            "memory": {"request": "8Gi", "limit": "12Gi"},
        },
    }
    with ctx.db.session() as session:
        service = Service(
            workspace_id=model.workspace_id or workspace(ctx),
            name=name,
            model=model.name,
            status="deploying",
            spec={"model_id": model.id, "request": request},
        )
        session.add(service)
        session.flush()
        ref = ServiceRef(service_id=service.id, name=name, model=model.name)
        event = ServiceDeployRequested(workspace=service.workspace_id, subject=name, data=ref)
        service_id = service.id
    deploy_service_on_kubernetes(event)
    return service_id


def service_row(ctx: Context, service_id: str) -> Service:
    with ctx.db.session() as session:
        found = session.get(Service, service_id)
        assert found is not None
        session.expunge(found)
        return found


def make_ready(api: Kube, pod: Any) -> None:
    now = "2026-11-29T00:00:00Z"
    patch_pod_status(
        api,
        pod,
        {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        },
    )


@pytest.mark.timeout(300)
def test_a_service_becomes_a_deployment_whose_every_ready_replica_gets_the_adapters(
    ctx: Context, api: Kube, namespace: str
) -> None:
    from tunelab.serving.served import adapter_name
    from tunelab.training.basemodel import ensure_tiny_base
    from tunelab.workers.gpu.serving.process import ServerProcess
    from tunelab.workers.kube.agent import AdapterAgent, serve

    base_dir = ensure_tiny_base(ctx.settings.model_cache_dir, ctx.settings.data_dir)
    with ctx.db.session() as session:
        base = Model(name="tiny-llama", kind="base", uri=f"file://{base_dir}", spec={})
        session.add(base)
        session.flush()
        session.expunge(base)
    tuned = adapter_model(ctx, base.uri, base_dir)
    lora = add_service(ctx, "ft-lora", tuned, namespace)
    plain = add_service(ctx, "base", base, namespace)
    assert service_row(ctx, lora).server_id == service_row(ctx, plain).server_id
    server_id = service_row(ctx, lora).server_id
    assert server_id is not None

    servers.reconcile_servers(ctx, api)
    name = server_manifests.server_name(server_id)
    deployment = api.apps.read_namespaced_deployment(name, namespace)
    assert deployment.spec.replicas == 2
    pod = deployment.spec.template.spec
    vllm, sidecar = pod.containers
    assert "--enable-lora" in vllm.args and vllm.args[vllm.args.index("--max-loras") + 1] == "8"
    assert vllm.resources.limits == {"cpu": "4", "memory": "12Gi", "nvidia.com/gpu": "1"}
    assert vllm.readiness_probe.http_get.path == "/health"
    assert sidecar.command == ["tunelab", "adapter-agent", server_id]
    assert sidecar.readiness_probe.http_get.path == "/ready"
    assert pod.init_containers[0].command == ["tunelab", "fetch-model", base.uri, "/models/base"]
    assert api.core.read_namespaced_service(name, namespace).spec.selector == {
        "tunelab.io/server-id": server_id
    }

    # As the kubelet would: run the pod's containers, here as local processes.
    model_server = ServerProcess(
        ctx.settings, "transformers", base_dir, ctx.settings.data_dir / "srv"
    )
    model_server.start(heartbeat=lambda: None)
    agent = AdapterAgent(ctx, server_id, model_server.url)
    http = serve(agent, ctx.settings.kube_agent_port)
    stop = threading.Event()
    threading.Thread(target=agent.run, args=(stop, 0.3), daemon=True).start()
    try:
        replicas = wait_for(
            "two pods",
            lambda: (
                len(pods_of(api, namespace, f"tunelab.io/server-id={server_id}")) == 2
                and pods_of(api, namespace, f"tunelab.io/server-id={server_id}")
            ),
        )
        servers.reconcile_servers(ctx, api)
        assert service_row(ctx, lora).status == "deploying"  # no replica is ready yet
        for replica in replicas:
            make_ready(api, replica)
        wait_for("the adapter in the server", lambda: lora in agent.loaded, 60)
        servers.reconcile_servers(ctx, api)
        assert service_row(ctx, lora).status == "ready"
        assert service_row(ctx, plain).status == "ready"
        assert "service.ready" in event_types(ctx)

        # The model server restarts empty: the replica is not ready until the sidecar has
        # put the adapter back.
        ready_url = f"http://127.0.0.1:{ctx.settings.kube_agent_port}/ready"
        assert httpx.get(ready_url).status_code == 200
        model_server.close()
        wait_for("the replica to be unready", lambda: httpx.get(ready_url).status_code == 503)
        model_server = ServerProcess(
            ctx.settings, "transformers", base_dir, ctx.settings.data_dir / "srv2"
        )
        model_server.start(heartbeat=lambda: None)
        agent.vllm_url = model_server.url

        def listed() -> bool:
            models = httpx.get(f"{model_server.url}/v1/models").json()["data"]
            return adapter_name(lora) in {m["id"] for m in models}

        wait_for("the adapter back in the restarted server", listed, 60)
        wait_for("the replica ready again", lambda: httpx.get(ready_url).status_code == 200)
    finally:
        stop.set()
        http.shutdown()
        http.server_close()
        model_server.close()

    # Deleting the last services (as DELETE /api/v1/services does) stops the server:
    # its Deployment and Service are removed.
    with ctx.db.session() as session:
        for service_id in (lora, plain):
            session.delete(session.get(Service, service_id))
    servers.reconcile_servers(ctx, api)
    with pytest.raises(ApiException):
        api.apps.read_namespaced_deployment(name, namespace)
    with pytest.raises(ApiException):
        api.core.read_namespaced_service(name, namespace)


def test_a_service_the_namespace_quota_refuses_fails_with_the_reason(
    ctx: Context, api: Kube, namespace: str
) -> None:
    api.core.create_namespaced_resource_quota(
        namespace,
        {"metadata": {"name": "gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}},
    )
    wait_for(
        "the quota's usage",
        lambda: api.core.read_namespaced_resource_quota("gpus", namespace).status.used is not None,
    )
    with ctx.db.session() as session:
        base = Model(name="tiny-llama", kind="base", uri="builtin://tiny-llama", spec={})
        session.add(base)
        session.flush()
        session.expunge(base)
    refused = add_service(ctx, "wants-a-gpu", base, namespace)
    elsewhere = add_service(ctx, "nowhere", base, "no-such-namespace")
    servers.reconcile_servers(ctx, api)
    error = service_row(ctx, refused).error
    assert service_row(ctx, refused).status == "failed" and error is not None
    assert error["code"] == "quota_exceeded" and "nvidia.com/gpu" in error["message"]
    assert api.apps.list_namespaced_deployment(namespace).items == []
    error = service_row(ctx, elsewhere).error
    assert error is not None and error["code"] == "namespace_missing"


def test_a_training_task_whose_job_vanished_fails_instead_of_waiting_forever(
    ctx: Context, api: Kube, namespace: str
) -> None:
    from tunelab.workers.kube.training import MISSING_AFTER, reconcile_jobs

    task = add_task(ctx, namespace)
    submit(ctx, task)
    jobs.delete(api, namespace, task.id)  # deleted by hand
    reconcile_jobs(ctx, api)
    assert task_row(ctx, task.id).status == "training"  # it may still be on its way
    with ctx.db.session() as session:
        row = session.get(Task, task.id)
        assert row is not None and row.started_at is not None
        row.started_at = row.started_at - MISSING_AFTER
    reconcile_jobs(ctx, api)
    error = task_row(ctx, task.id).error
    assert error is not None and error["code"] == "job_missing"


def test_a_server_pods_init_container_fetches_the_model_into_its_volume(tmp_path: Path) -> None:
    """`tunelab fetch-model`, the model-server pod's init container, run here: the folder
    vLLM is started on holds the model."""
    import subprocess
    import sys

    env = {**os.environ, "TUNELAB_DATA_DIR": str(tmp_path)}
    target = tmp_path / "models" / "base"
    target.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "fetch-model", "builtin://tiny-llama", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (target / "config.json").exists() and any(target.glob("*.safetensors"))
