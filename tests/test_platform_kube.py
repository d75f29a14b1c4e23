"""The platform on the Kubernetes backend, end to end over the real services and a real
API server: an experiment's task becomes a Job, and the Job's pod command, run here as a
kubelet would run its container, trains the task and reports through the platform's
events; a task that fails for its own reasons exits with the code the Job's failure
policy does not retry."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.platform import tunelab, wait_until
from tests.platform_fixture import Platform
from tests.test_platform_training import experiment, group, task, upload
from tunelab.settings import Settings
from tunelab.synthetic import qa_pairs
from tunelab.workers.kube import jobs
from tunelab.workers.kube.client import Kube, kube

PLATFORM_ENV: dict[str, str] = {"TUNELAB_BACKEND": "kubernetes"}
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
    assert pod.returncode == jobs.EXIT_USER_ERROR, pod.stderr[-3000:]
    result = platform.wait_for_experiment("doomed", timeout=120)
    assert result["status"] == "failed"
    assert result["tasks"][0]["error"]["code"] == "base_model_unavailable"
