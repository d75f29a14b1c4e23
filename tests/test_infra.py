"""infra/: both Kustomize overlays render, say what the platform needs (probes, GPU
placement, the Dramatiq lists KEDA scales on, least RBAC, NetworkPolicies, disruption
budgets, placeholder-only secrets), and pass `kubectl apply --dry-run=server` against a
real Kubernetes API server (1.20, tests/kube.py), KEDA's objects left out when the
server has no KEDA CRDs."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"
OVERLAYS = {"dev": "tunelab-dev", "prod": "tunelab"}
"""Each overlay and the namespace it installs into."""
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
CPU_QUEUE, GPU_QUEUE = "tunelab-cpu", "tunelab-gpu"
GPU_QUEUES = [GPU_QUEUE, f"{GPU_QUEUE}-train"]
"""Relayed by the CPU workers on the Kubernetes backend (model servers are Deployments)."""
NOT_SECRET = {"TUNELAB_S3_ENDPOINT", "address"}
"""Secret keys that hold addresses, not credentials."""


def kubectl(*args: str, stdin: str | None = None) -> str:
    binary = shutil.which("kubectl")
    if binary is None:
        if os.environ.get("CI"):
            raise RuntimeError("kubectl is required in CI")
        pytest.skip("kubectl (with kustomize) is not installed")
    result = subprocess.run(
        [binary, *args], input=stdin, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


@cache
def _rendered(path: str) -> str:
    return kubectl("kustomize", path)


def render(overlay: str | Path) -> list[dict[str, Any]]:
    """The overlay's objects as kustomize renders them (a fresh copy each call)."""
    path = overlay if isinstance(overlay, Path) else INFRA / "overlays" / overlay
    return [doc for doc in yaml.safe_load_all(_rendered(str(path))) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def generated(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """A generated object, whose name may carry kustomize's hash suffix."""
    hashed = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    (match,) = [d for d in docs if d["kind"] == kind and hashed.fullmatch(d["metadata"]["name"])]
    return match


def secret_values(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    data = generated(docs, "Secret", name)["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return find(docs, "ConfigMap", "tunelab-config")["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_everything_into_its_own_namespace(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Secret",
        "Deployment",
        "StatefulSet",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
    } <= kinds
    for name in ("tunelab-api", "tunelab-cpu-worker", "tunelab-gpu-worker"):
        find(docs, "Deployment", name)
    for store in ("tunelab-redis", "tunelab-postgres", "tunelab-minio"):
        claims = find(docs, "StatefulSet", store)["spec"]["volumeClaimTemplates"]
        assert claims[0]["spec"]["resources"]["requests"]["storage"]
        find(docs, "Service", store)
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for doc in docs:
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == OVERLAYS[overlay], doc["metadata"]
    assert find(docs, "Namespace", OVERLAYS[overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_listens_on_all_addresses_is_ready_on_readyz_and_migrates_first(
    overlay: str,
) -> None:
    docs = render(overlay)
    api = find(docs, "Deployment", "tunelab-api")
    (migrate,) = pod_spec(api)["initContainers"]
    assert migrate["args"] == ["migrate"]
    (container,) = pod_spec(api)["containers"]
    assert container["args"] == ["api"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TUNELAB_API_HOST"] == "0.0.0.0"
    assert env["TUNELAB_API_PORT"] == "8000"
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = find(docs, "Service", "tunelab-api")
    assert (
        service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"][0]["port"] == 8000


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_workers_ask_for_a_gpu_on_gpu_nodes_and_tolerate_their_taint(overlay: str) -> None:
    gpu = find(render(overlay), "Deployment", "tunelab-gpu-worker")
    spec = pod_spec(gpu)
    (worker,) = spec["containers"]
    assert worker["args"] == ["worker", "gpu"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert "replicas" not in gpu["spec"], "KEDA owns the count; a re-apply must not reset it"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_tunelab_process_gets_the_kubernetes_backend_on_s3_from_config_and_secret(
    overlay: str,
) -> None:
    docs = render(overlay)
    settings = config(docs)
    assert settings["TUNELAB_BACKEND"] == "kubernetes"
    assert settings["TUNELAB_STORE"] == "s3"
    assert settings["TUNELAB_S3_BUCKET"]
    assert settings["TUNELAB_CPU_QUEUE"] == CPU_QUEUE
    assert settings["TUNELAB_GPU_QUEUE"] == GPU_QUEUE
    # Training pods and model servers are given these two by name (TUNELAB_KUBE_ENV_FROM).
    assert settings["TUNELAB_KUBE_ENV_FROM"] == "tunelab-config,tunelab-secrets"
    gpu_image = pod_spec(find(docs, "Deployment", "tunelab-gpu-worker"))["containers"][0]["image"]
    assert settings["TUNELAB_KUBE_IMAGE"] == gpu_image
    secrets = secret_values(docs, "tunelab-secrets")
    assert {
        "TUNELAB_DATABASE_URL",
        "TUNELAB_REDIS_URL",
        "TUNELAB_S3_ENDPOINT",
        "TUNELAB_S3_ACCESS_KEY",
        "TUNELAB_S3_SECRET_KEY",
    } <= secrets.keys()
    assert all(key.startswith("TUNELAB_") for key in secrets)  # they become env variables
    commands = {
        "tunelab-api": ["api"],
        "tunelab-cpu-worker": ["worker", "cpu"],
        "tunelab-gpu-worker": ["worker", "gpu"],
    }
    for name, args in commands.items():
        deployment = find(docs, "Deployment", name)
        assert pod_spec(deployment)["containers"][0]["args"] == args
        for container in containers(deployment):
            assert container["envFrom"] == [
                {"configMapRef": {"name": "tunelab-config"}},
                {"secretRef": {"name": "tunelab-secrets"}},
            ], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_store_addresses_resolve_from_any_namespace_and_passwords_agree(overlay: str) -> None:
    """Training and model-server pods in other namespaces read the same Secret, so the
    URLs name services with their namespace; each password is the one its server uses."""
    docs = render(overlay)
    namespace = OVERLAYS[overlay]
    secrets = secret_values(docs, "tunelab-secrets")
    redis_auth = secret_values(docs, "tunelab-redis")
    postgres = secret_values(docs, "tunelab-postgres")
    urls = {
        "tunelab-postgres": urlsplit(secrets["TUNELAB_DATABASE_URL"]),
        "tunelab-redis": urlsplit(secrets["TUNELAB_REDIS_URL"]),
        "tunelab-minio": urlsplit(secrets["TUNELAB_S3_ENDPOINT"]),
    }
    for service, url in urls.items():
        assert url.hostname == f"{service}.{namespace}.svc"
        assert url.port == find(docs, "Service", service)["spec"]["ports"][0]["port"]
    assert urls["tunelab-postgres"].scheme == "postgresql+psycopg"
    assert urls["tunelab-postgres"].password == postgres["password"]
    assert urls["tunelab-redis"].password == redis_auth["password"]
    assert redis_auth["address"] == urls["tunelab-redis"].netloc.split("@")[1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_clusters_file_lets_tasks_and_services_run_in_the_install_namespace(
    overlay: str,
) -> None:
    docs = render(overlay)
    clusters_map = generated(docs, "ConfigMap", "tunelab-clusters")
    clusters = tomllib.loads(clusters_map["data"]["clusters.toml"])["clusters"]
    assert OVERLAYS[overlay] in clusters["local"]["namespaces"]
    for name in ("tunelab-api", "tunelab-cpu-worker", "tunelab-gpu-worker"):
        spec = pod_spec(find(docs, "Deployment", name))
        (volume,) = [v for v in spec["volumes"] if v["name"] == "clusters"]
        assert volume["configMap"]["name"] == clusters_map["metadata"]["name"]
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["TUNELAB_CLUSTERS_FILE"] == "/etc/tunelab/clusters.toml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_workers_on_the_dramatiq_lists_of_their_queues(overlay: str) -> None:
    docs = render(overlay)
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled) == {"tunelab-cpu-worker", "tunelab-gpu-worker"}
    (auth,) = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    for doc in [*scaled.values(), auth]:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secret_values(docs, ref["name"])
    lists = {}
    for name, obj in scaled.items():
        find(docs, "Deployment", obj["spec"]["scaleTargetRef"]["name"])
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
            assert int(trigger["metadata"]["listLength"]) > 0
        lists[name] = {t["metadata"]["listName"] for t in obj["spec"]["triggers"]}
    # Dramatiq's Redis broker keeps queue Q in the list `dramatiq:Q`; one trigger per queue.
    assert f"dramatiq:{CPU_QUEUE}" in lists["tunelab-cpu-worker"]
    assert {f"dramatiq:{q}" for q in GPU_QUEUES} <= lists["tunelab-gpu-worker"]
    assert {f"dramatiq:{q}.DQ" for q in GPU_QUEUES} <= lists["tunelab-gpu-worker"]
    assert scaled["tunelab-gpu-worker"]["spec"]["minReplicaCount"] == 0
    # The CPU workers run the Kubernetes reconciler: never scaled to zero.
    assert scaled["tunelab-cpu-worker"]["spec"]["minReplicaCount"] >= 1
    for spec in (s["spec"] for s in scaled.values()):
        assert spec["maxReplicaCount"] >= max(1, spec["minReplicaCount"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_cpu_workers_hold_rbac_and_it_is_no_more_than_the_backend_needs(
    overlay: str,
) -> None:
    docs = render(overlay)
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    rules = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("batch", "jobs"): sorted(["create", "get", "list", "watch", "delete", "patch"]),
        ("apps", "deployments"): sorted(
            ["create", "get", "list", "watch", "delete", "patch", "update"]
        ),
        ("", "services"): sorted(["create", "get", "list", "watch", "delete"]),
        ("", "pods"): sorted(["get", "list", "watch", "create"]),
        ("", "pods/log"): ["get"],
        ("", "events"): sorted(["get", "list", "watch"]),
        ("", "resourcequotas"): sorted(["get", "list"]),
        ("", "namespaces"): ["get"],
    }
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field]
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tunelab", "namespace": OVERLAYS[overlay]}
    ]
    assert find(docs, "ServiceAccount", "tunelab")["automountServiceAccountToken"] is False
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        spec = pod_spec(workload)
        if workload["metadata"]["name"] == "tunelab-cpu-worker":
            assert spec["serviceAccountName"] == "tunelab"
            assert spec["automountServiceAccountToken"] is True
        else:
            assert "serviceAccountName" not in spec
            assert spec["automountServiceAccountToken"] is False, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_outsiders_reach_only_the_api(overlay: str) -> None:
    docs = render(overlay)
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deny = policies["tunelab-default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert not deny.get("ingress")
    api_labels = find(docs, "Deployment", "tunelab-api")["spec"]["template"]["metadata"]["labels"]
    open_to_all = {
        name
        for name, spec in policies.items()
        for rule in spec.get("ingress", [])
        if not rule.get("from")
    }
    assert open_to_all == {"tunelab-api"}
    api = policies["tunelab-api"]
    assert api["podSelector"]["matchLabels"].items() <= api_labels.items()
    assert api["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]
    tunelab_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "tunelab"}}}
    created_pods = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "tunelab"}},
    }
    for store, port in (("redis", 6379), ("postgres", 5432), ("minio", 9000)):
        spec = policies[f"tunelab-{store}"]
        labels = find(docs, "StatefulSet", f"tunelab-{store}")["spec"]["template"]["metadata"]
        assert spec["podSelector"]["matchLabels"].items() <= labels["labels"].items()
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        peers = [p for p in rule["from"] if p not in (tunelab_pods, created_pods)]
        if store == "redis":  # KEDA's operator reads the queue lengths
            (keda,) = peers
            assert keda["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": "keda"
            }
        else:
            assert peers == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_cover_the_api_and_cpu_workers_in_policy_v1(overlay: str) -> None:
    docs = render(overlay)
    budgets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert set(budgets) == {"tunelab-api", "tunelab-cpu-worker"}
    for name, budget in budgets.items():
        assert budget["apiVersion"] == "policy/v1"  # the only version served since 1.25
        labels = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert budget["spec"]["maxUnavailable"] == 1  # never blocks a drain of one replica


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_in_the_repository_are_marked_placeholders(overlay: str) -> None:
    docs = render(overlay)
    secrets = [d for d in docs if d["kind"] == "Secret"]
    assert len(secrets) == 3
    for secret in secrets:
        for key, value in secret_values(docs, secret["metadata"]["name"]).items():
            if key not in NOT_SECRET:
                assert "change-me" in value, f"{secret['metadata']['name']}/{key}"


def test_prod_pins_every_image_and_dev_runs_locally_built_dev_images() -> None:
    for overlay in OVERLAYS:
        docs = render(overlay)
        images = {c["image"] for d in docs if d["kind"] in WORKLOADS for c in containers(d)} | {
            config(docs)["TUNELAB_KUBE_IMAGE"],
            config(docs)["TUNELAB_KUBE_VLLM_IMAGE"],
        }
        for image in images:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", image
        tunelab = {i for i in images if i.rsplit("/", 1)[-1].startswith("tunelab")}
        if overlay == "dev":
            assert tunelab == {"tunelab:dev", "tunelab-gpu:dev"}
        else:
            assert all(not i.endswith(":dev") for i in tunelab) and len(tunelab) == 2
    prod, dev = (find(render(o), "Deployment", "tunelab-api") for o in ("prod", "dev"))
    assert dev["spec"]["replicas"] == 1 < prod["spec"]["replicas"]
    assert pod_spec(prod)["containers"][0]["resources"]["limits"]["cpu"]


def test_an_overlay_without_the_in_cluster_stores_renders_for_managed_services(
    tmp_path: Path,
) -> None:
    """Managed Redis, PostgreSQL and S3: the components left out, the same base."""
    dev = INFRA / "overlays" / "dev"
    shutil.copytree(dev / "secrets", tmp_path / "secrets")
    shutil.copy(dev / "clusters.toml", tmp_path)
    kustomization = yaml.safe_load((dev / "kustomization.yaml").read_text())
    kustomization["resources"] = [os.path.relpath(INFRA / "base", tmp_path)]
    del kustomization["components"], kustomization["patches"]
    kustomization["secretGenerator"] = [
        g for g in kustomization["secretGenerator"] if g["name"] != "tunelab-postgres"
    ]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs = render(tmp_path)
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "Job")]
    # The Secret and TriggerAuthentication `tunelab-redis` stay: KEDA reaches a managed
    # Redis through them.
    assert {"tunelab-redis", "tunelab-postgres", "tunelab-minio"}.isdisjoint(
        d["metadata"]["name"] for d in docs if d["kind"] in ("Service", "NetworkPolicy")
    )
    find(docs, "Deployment", "tunelab-api")
    find(docs, "ScaledObject", "tunelab-gpu-worker")


def for_server(doc: dict[str, Any], served: set[str]) -> dict[str, Any]:
    """The object as this server can take it. The manifests use policy/v1 for
    PodDisruptionBudgets (Kubernetes 1.21+, and the only version since 1.25); the test
    server is 1.20, which serves policy/v1beta1 only, with the same fields for what the
    manifests use (selector, maxUnavailable). So the test, not the overlay, converts:
    a dev overlay on v1beta1 would not apply to any current cluster."""
    if doc["kind"] == "PodDisruptionBudget" and doc["apiVersion"] not in served:
        assert "policy/v1beta1" in served
        return {**doc, "apiVersion": "policy/v1beta1"}
    return doc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_passes_a_server_side_dry_run(kubeconfig: str, overlay: str) -> None:
    original = render(overlay)
    docs = render(overlay)
    served = set(kubectl("--kubeconfig", kubeconfig, "api-versions").split())
    # Without KEDA's CRDs the server cannot take ScaledObjects or TriggerAuthentications:
    # those, and only those, are left out (they are checked by the render tests above).
    if "keda.sh/v1alpha1" not in served:
        skipped = [d for d in docs if d["kind"] in KEDA_KINDS]
        docs = [d for d in docs if d["kind"] not in KEDA_KINDS]
        assert {d["kind"] for d in skipped} == KEDA_KINDS and len(skipped) == 3
    docs = [for_server(d, served) for d in docs]
    converted = {d["kind"] for d in docs if d not in original}
    assert converted <= {"PodDisruptionBudget"}
    for doc in docs:
        assert doc["apiVersion"] in served, f"{doc['kind']} {doc['apiVersion']}"
    # Namespaced objects need their namespace to exist: it is created for real.
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    kubectl("--kubeconfig", kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(namespaces))
    try:
        # --validate=strict: kubectl checks every field against the server's own OpenAPI
        # schema, so a field Kubernetes 1.20 does not know fails here too.
        out = kubectl(
            "--kubeconfig",
            kubeconfig,
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            "-",
            stdin=yaml.safe_dump_all(docs),
        )
    finally:
        kubectl(
            "--kubeconfig", kubeconfig, "delete", "namespace", OVERLAYS[overlay], "--wait=false"
        )
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(docs), out
    assert all(line.endswith("(server dry run)") for line in lines), out
