"""The platform on the Kubernetes backend, end to end over the real services and a real
API server: an experiment's task becomes a Job, and the Job's pod command, run here as a
kubelet would run its container, trains the task and reports through the platform's
events; a task that fails for its own reasons exits with the code the Job's failure
policy does not retry; the fine-tuned model, deployed, is a Deployment whose pod (run
here too) the API, installed without the `gpu` extra as its image is, chats with."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.platform import Processes, tunelab, wait_until
from tests.platform_fixture import Platform
from tests.services import free_port
from tests.test_kube_backend import make_ready, pods_of
from tests.test_platform_training import experiment, group, task, upload
from tunelab.settings import Settings
from tunelab.synthetic import qa_pairs
from tunelab.training.exits import EXIT_USER_ERROR
from tunelab.workers.kube.client import Kube, kube
from tunelab.workers.kube.server_manifests import SERVER_SELECTOR

API_PYTHON = os.environ.get("TUNELAB_TEST_API_PYTHON") or str(
    Path.home() / ".cache" / "tunelab" / "api-venv" / "bin" / "python"
)
if not Path(API_PYTHON).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"no API-only environment at {API_PYTHON}: run scripts/api-venv.sh")
    pytest.skip("no API-only environment (scripts/api-venv.sh makes one)", allow_module_level=True)
PLATFORM_API_PYTHON = API_PYTHON
MODEL_PORT, AGENT_PORT = free_port(), free_port()
PLATFORM_ENV: dict[str, str] = {
    "TUNELAB_BACKEND": "kubernetes",
    # No kube-proxy or cluster DNS here: a Service's address is where the test runs the
    # server pod's model server (in a cluster, the default: {name}.{namespace}.svc).
    "TUNELAB_KUBE_SERVER_URL": f"http://127.0.0.1:{MODEL_PORT}",
    "TUNELAB_KUBE_AGENT_PORT": str(AGENT_PORT),
    "TUNELAB_KUBE_POLL_S": "0.5",
}
VOLUME_PATHS = {"TUNELAB_MODEL_CACHE", "TORCH_EXTENSIONS_DIR"}
"""Env pointing into the pod's volumes; here the platform's own folders stand in."""


@pytest.fixture(scope="module", autouse=True)
def cluster(kubeconfig: str) -> Kube:
    PLATFORM_ENV["TUNELAB_KUBE_CONFIG"] = kubeconfig  # read when the platform starts
    return kube(Settings(kube_config=Path(kubeconfig)))


def job_of(api: Kube, experiment_name: str) -> Any:
    def made() -> Any:
        found = api.batch.list_namespaced_job(
            "default", label_selector=f"tunelab.io/experiment={experiment_name}"
        ).items
        return found[0] if found else None

    return wait_until(made, f"the Job of {experiment_name}", 60, 0.5)


def run_pod(platform: Platform, job: Any) -> subprocess.CompletedProcess[str]:
    """The Job's container, as a kubelet would start it: its command and env."""
    (container,) = job.spec.template.spec.containers
    env = {**os.environ, **platform.env}
    env.update({e.name: e.value or "" for e in container.env if e.name not in VOLUME_PATHS})
    assert container.command[0] == "tunelab"
    return subprocess.run(
        tunelab(*container.command[1:]),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.timeout(900)
def test_a_task_runs_as_a_job_whose_pod_trains_and_reports_through_events(
    platform: Platform, cluster: Kube
) -> None:
    upload(platform, "facts", qa_pairs(20, seed=99))
    group(platform, "quick", "tiny-lora", epochs=2)
    experiment(platform, "on-kube", task("adapter", "quick"))
    job = job_of(cluster, "on-kube")
    assert job.spec.template.spec.containers[0].command[:2] == ["tunelab", "train-task"]
    assert platform.client.get("/api/v1/experiments/on-kube").json()["status"] == "running"

    pod = run_pod(platform, job)
    assert pod.returncode == 0, pod.stderr[-3000:]
    result = platform.wait_for_experiment("on-kube", timeout=120)
    assert result["status"] == "succeeded", json.dumps(result, indent=2)
    trained = result["tasks"][0]
    assert trained["model"] and trained["progress"]["step"] == trained["progress"]["total_steps"]
    progress = platform.events(type="task.progress")
    assert progress and all(e["data"]["experiment"] == "on-kube" for e in progress)


@pytest.mark.timeout(300)
def test_a_task_that_cannot_train_exits_with_the_code_the_job_does_not_retry(
    platform: Platform, cluster: Kube
) -> None:
    response = platform.client.post(
        "/api/v1/models", json={"name": "vanished", "uri": "/nonexistent/model"}
    )
    assert response.status_code == 201, response.text
    experiment(platform, "doomed", {**task("broken", "quick"), "base_model": "vanished"})
    pod = run_pod(platform, job_of(cluster, "doomed"))
    assert pod.returncode == EXIT_USER_ERROR, pod.stderr[-3000:]
    result = platform.wait_for_experiment("doomed", timeout=120)
    assert result["status"] == "failed"
    assert result["tasks"][0]["error"]["code"] == "base_model_unavailable"


@pytest.mark.timeout(600)
def test_an_api_without_the_gpu_stack_chats_with_a_deployed_model_through_its_service(
    platform: Platform, cluster: Kube, tmp_path: Path
) -> None:
    import openai

    from tunelab.training.basemodel import ensure_tiny_base

    no_torch = subprocess.run([API_PYTHON, "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "the API's environment must not have torch"
    result = platform.wait_for_experiment("on-kube", timeout=60)
    model = result["tasks"][0]["model"]
    deployed = platform.client.post("/api/v1/services", json={"name": "chat", "model": model})
    assert deployed.status_code == 202, deployed.text

    def server_pods() -> list[Any]:
        return pods_of(cluster, "default", SERVER_SELECTOR)

    (pod,) = wait_until(server_pods, "the model server's pod", 60, 0.5)
    (_vllm, sidecar) = pod.spec.containers
    assert sidecar.command[:2] == ["tunelab", "adapter-agent"]
    # As the kubelet would: the pod's containers, here as local processes.
    settings = Settings(model_cache=Path(platform.env["TUNELAB_MODEL_CACHE"]))
    base_dir = ensure_tiny_base(settings.model_cache_dir, settings.data_dir)
    pod_processes = Processes(platform.env, tmp_path)
    pod_processes.start(
        "model-server",
        *("--model", str(base_dir), "--port", str(MODEL_PORT)),
        module="tunelab.workers.gpu.serving.hf_server",
    )
    pod_processes.start(
        "adapters", *sidecar.command[1:], "--vllm-url", f"http://127.0.0.1:{MODEL_PORT}"
    )
    try:
        make_ready(cluster, pod)
        service = wait_until(
            lambda: (
                (s := platform.client.get("/api/v1/services/chat").json())["status"]
                in ("ready", "failed")
                and s
            ),
            "the service to be ready",
            120,
            0.5,
        )
        assert service["status"] == "ready", service
        with openai.OpenAI(
            base_url=f"{platform.url}/v1", api_key=platform.token, max_retries=0
        ) as client:
            reply = client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": qa_pairs(20, seed=99)[0][0]}],
                max_tokens=16,
                temperature=0,
            )
            assert reply.choices[0].message.content and reply.usage is not None
            assert reply.usage.completion_tokens > 0
            streamed = client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=8,
                stream=True,
            )
            assert any(c.choices and c.choices[0].delta.content for c in streamed)
    finally:
        pod_processes.stop()
