"""What is checked before a service is placed or an adapter is loaded: each refusal
names its field or its reason, because the alternative is a server that never starts
or, with a bad adapter, a vLLM engine that dies with every service on it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tunelab.clusters import Cluster
from tunelab.serving.adapters import AdapterRejected, check_adapter
from tunelab.serving_rules import DeployRequest, fit_problems
from tunelab.settings import Settings

GiB = 2**30
CLUSTER = Cluster(
    name="lab", namespaces=("default",), cpu=Decimal(8), memory=Decimal(16 * GiB), gpus={"cpu": 0}
)
SETTINGS = Settings(vllm_kv_cache_gib=1, serving_overhead_gib=2.0)


def problems(in_use: float = 0, **request: Any) -> dict[str, str]:
    spec = DeployRequest.model_validate({"name": "svc", "model": "m", **request})
    found = fit_problems(SETTINGS, spec, CLUSTER, weights=GiB, memory_in_use=in_use)
    return {p["field"]: p["message"] for p in found}


def test_a_service_within_the_cluster_fits() -> None:
    assert problems() == {}


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        ({"resources": {"gpu_count": 1}}, "resources.gpu_count", "use gpu_count 0"),
        ({"resources": {"gpu_type": "a100", "gpu_count": 1}}, "resources.gpu_type", "a100"),
        (
            {"resources": {"memory": {"request": "1Gi", "limit": "2Gi"}}},
            "resources.memory.limit",
            "4.2Gi a server of this model needs",
        ),
        (
            {"resources": {"memory": {"request": "32Gi", "limit": "32Gi"}}},
            "resources.memory.request",
            "more than cluster 'lab' has",
        ),
        (
            {"resources": {"cpu": {"request": "4", "limit": "2"}}},
            "resources.cpu.request",
            "exceeds limit",
        ),
    ],
)
def test_a_service_that_cannot_fit_is_told_why(
    request_: dict[str, Any], field: str, words: str
) -> None:
    found = problems(**request_)
    assert field in found, found
    assert words in found[field]


def test_memory_held_by_other_services_counts() -> None:
    found = problems(in_use=14 * GiB, resources={"memory": {"request": "4Gi", "limit": "6Gi"}})
    assert "other services of cluster 'lab' hold 14.0Gi" in found["resources.memory.request"]


def adapter(tmp_path: Path, weights: bool = True, **config: Any) -> Path:
    base = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 32,
        "target_modules": ["q_proj", "v_proj"],
        "modules_to_save": None,
    }
    (tmp_path / "adapter_config.json").write_text(json.dumps({**base, **config}))
    if weights:
        (tmp_path / "adapter_model.safetensors").write_bytes(b"\0")
    return tmp_path


def test_a_plain_lora_adapter_passes(tmp_path: Path) -> None:
    check_adapter(adapter(tmp_path), max_rank=16)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"r": 64}, "rank 64 is above the server's limit of 16"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
        ({"target_modules": ["q_proj", "lm_head"]}, "['lm_head'] are not supported"),
        ({"target_modules": ".*proj"}, "as a pattern"),
        ({"peft_type": "PREFIX_TUNING"}, "is not LORA"),
        ({"use_dora": True}, "DoRA"),
    ],
)
def test_an_adapter_the_server_would_choke_on_is_refused(
    tmp_path: Path, config: dict[str, Any], words: str
) -> None:
    with pytest.raises(AdapterRejected) as caught:
        check_adapter(adapter(tmp_path, **config), max_rank=16)
    assert words in str(caught.value)


def test_an_adapter_without_weights_or_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterRejected, match="weights"):
        check_adapter(adapter(tmp_path, weights=False), max_rank=16)
    with pytest.raises(AdapterRejected, match=r"adapter_config\.json"):
        check_adapter(tmp_path / "nothing", max_rank=16)
