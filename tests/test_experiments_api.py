"""Parameter groups and experiments through the HTTP functions in-process: every rule of
the seed is checked before anything is stored, and each refusal names its field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_http import Api, app_api, assert_error
from tunelab.db.tables import Dataset, EventRecord, Experiment, Model, Task, Workspace
from tunelab.settings import Settings

CLUSTERS = """
[clusters.local]
namespaces = ["default", "research"]
cpu = "8"
memory = "32Gi"
gpus = { a100 = 2 }
"""


@pytest.fixture
def api(tmp_path: Path, redis_url: str, queues: dict[str, str]) -> Iterator[Api]:
    (tmp_path / "clusters.toml").write_text(CLUSTERS)
    settings = Settings(
        data_dir=tmp_path,
        redis_url=redis_url,
        cpu_queue=queues["cpu"],
        gpu_queue=queues["gpu"],
        clusters_file=tmp_path / "clusters.toml",
    )
    with app_api(settings) as api:
        _ready_dataset(api, "faq", "default")
        _ready_dataset(api, "elsewhere", "research")
        _ready_dataset(api, "pending", "default", status="validating")
        for name, namespace in (("lora", "default"), ("lab", "research")):
            response = api.client.post(
                "/api/v1/parameter-groups",
                json={"name": name, "namespace": namespace},
                headers=api.auth(),
            )
            assert response.status_code == 201, response.text
        yield api


def _ready_dataset(
    api: Api, name: str, namespace: str, status: str = "ready", kind: str = "pairs"
) -> None:
    """A dataset as ingestion leaves it (ingestion itself is tested elsewhere)."""
    with api.db.session() as session:
        session.add(
            Dataset(
                workspace_id=_workspace_id(api),
                name=name,
                metadata_={
                    "cluster": "local",
                    "namespace": namespace,
                    "language": "en",
                    "feature_mapping": {"question": "question", "answer": "answer"},
                },
                source={"type": "upload"},
                status=status,
                files={"train": "file:///nowhere/train.parquet"},
                stats={"train": {"rows": 10, "kind": kind}},
            )
        )


def _workspace_id(api: Api) -> str:
    with api.db.session() as session:
        workspace = session.query(Workspace).filter_by(name="acme").one()
        return str(workspace.id)


def task(**fields: Any) -> dict[str, Any]:
    return {
        "name": "t1",
        "base_model": "tiny-llama",
        "dataset": "faq",
        "parameter_group": "lora",
        **fields,
    }


def create(api: Api, **fields: Any) -> Any:
    body = {"name": "exp", "evaluation": "rouge-bleu", "tasks": [task()], **fields}
    return api.client.post("/api/v1/experiments", json=body, headers=api.auth())


def test_a_parameter_group_gets_the_seed_defaults_and_a_preset_on_top(api: Api) -> None:
    group = api.client.get("/api/v1/parameter-groups/lora", headers=api.auth()).json()
    assert group["parameters"]["lora_rank"] == 4
    assert group["parameters"]["learning_rate"] == 1e-3
    assert group["parameters"]["batch_size"] == 32
    assert group["parameters"]["scheduler"] == "cosine"
    response = api.client.post(
        "/api/v1/parameter-groups",
        json={"name": "tuned", "preset": "tiny-lora", "parameters": {"epochs": 3}},
        headers=api.auth(),
    )
    assert response.status_code == 201, response.text
    assert response.json()["parameters"]["lora_rank"] == 16
    assert response.json()["parameters"]["epochs"] == 3


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"learning_rate": 0}, "parameters.learning_rate"),
        ({"lora_rank": 0}, "parameters.lora_rank"),
        ({"scheduler": "exotic"}, "parameters.scheduler"),
        ({"warmup_ratio": 1.5}, "parameters.warmup_ratio"),
        ({"unknown_knob": 1}, "parameters.unknown_knob"),
        ({"fp16": True, "bf16": True}, "parameters"),
    ],
)
def test_a_bad_parameter_is_refused_naming_it(
    api: Api, parameters: dict[str, Any], field: str
) -> None:
    response = api.client.post(
        "/api/v1/parameter-groups",
        json={"name": "bad", "parameters": parameters},
        headers=api.auth(),
    )
    error = assert_error(response, 422, "invalid")
    assert error["details"][0]["field"] == field
    assert api.client.get("/api/v1/parameter-groups/bad", headers=api.auth()).status_code == 404


def test_an_experiment_is_stored_queued_with_its_event(api: Api) -> None:
    response = create(api, tasks=[task(), task(name="t2", overrides={"epochs": 2})])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert [t["status"] for t in body["tasks"]] == ["queued", "queued"]
    assert body["tasks"][1]["parameters"]["epochs"] == 2
    with api.db.session() as session:
        assert session.query(EventRecord).filter_by(type="experiment.created").count() == 1
    listed = api.client.get("/api/v1/experiments", headers=api.auth()).json()["items"]
    assert [e["name"] for e in listed] == ["exp"]
    assert api.client.get("/api/v1/experiments", headers=api.auth("globex")).json() == {"items": []}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"tasks": [task(name="-t")]}, "tasks.0.name"),
        ({"tasks": [task(), task()]}, "tasks[1].name"),
        ({"evaluation": "vibes"}, "evaluation"),
        ({"namespace": "nowhere"}, "namespace"),
        ({"tasks": [task(dataset="elsewhere")]}, "tasks[0].dataset"),
        ({"tasks": [task(dataset="pending")]}, "tasks[0].dataset"),
        ({"tasks": [task(dataset="missing")]}, "tasks[0].dataset"),
        ({"tasks": [task(parameter_group="lab")]}, "tasks[0].parameter_group"),
        ({"tasks": [task(base_model="gpt-9")]}, "tasks[0].base_model"),
        ({"tasks": [task(overrides={"epochs": 0})]}, "tasks[0].overrides.epochs"),
        ({"tasks": [task(overrides={"quantization": "int4"})]}, "tasks[0].overrides.quantization"),
        (
            {"tasks": [task(resources={"cpu": {"request": "4", "limit": "2"}})]},
            "tasks[0].resources.cpu.request",
        ),
        (
            {"tasks": [task(resources={"memory": {"request": "64Gi", "limit": "64Gi"}})]},
            "tasks[0].resources.memory.request",
        ),
        (
            {"tasks": [task(resources={"cpu": {"request": "lots", "limit": "2"}})]},
            "tasks[0].resources.cpu.request",
        ),
        (
            {"tasks": [task(compute={"gpu_type": "h100", "gpu_count": 1})]},
            "tasks[0].compute.gpu_type",
        ),
        (
            {"tasks": [task(compute={"gpu_type": "a100", "gpu_count": 4})]},
            "tasks[0].compute.gpu_count",
        ),
    ],
)
def test_an_experiment_breaking_a_rule_is_refused_naming_the_field(
    api: Api, fields: dict[str, Any], field: str
) -> None:
    error = assert_error(create(api, **fields), 422, "invalid")
    assert field in [d["field"] for d in error["details"]], error
    assert api.count(Experiment) == 0 and api.count(Task) == 0


def test_a_taken_name_is_a_conflict(api: Api) -> None:
    assert create(api).status_code == 202
    assert_error(create(api), 409, "conflict")


def test_a_parameter_group_in_use_cannot_be_deleted(api: Api) -> None:
    assert create(api).status_code == 202
    assert_error(
        api.client.delete("/api/v1/parameter-groups/lora", headers=api.auth()), 409, "conflict"
    )
    assert api.client.post("/api/v1/experiments/exp/cancel", headers=api.auth()).status_code == 202
    response = api.client.delete("/api/v1/parameter-groups/lora", headers=api.auth())
    assert response.status_code == 200, response.text


def test_cancelling_a_queued_experiment_cancels_its_tasks_at_once(api: Api) -> None:
    assert create(api).status_code == 202
    body = api.client.post("/api/v1/experiments/exp/cancel", headers=api.auth()).json()
    assert body["status"] == "cancelled" and body["tasks"][0]["status"] == "cancelled"
    again = api.client.post("/api/v1/experiments/exp/cancel", headers=api.auth())
    assert_error(again, 409, "conflict")


def test_the_builtin_methods_and_base_model_are_listed(api: Api) -> None:
    methods = api.client.get("/api/v1/evaluations", headers=api.auth()).json()["items"]
    assert {m["name"] for m in methods} >= {"rouge-bleu", "exact-match", "perplexity"}
    models = api.client.get("/api/v1/models", headers=api.auth()).json()["items"]
    assert [(m["name"], m["kind"], m["builtin"]) for m in models] == [("tiny-llama", "base", True)]


def test_a_task_may_continue_a_fine_tuned_model_and_carries_its_lineage(api: Api) -> None:
    with api.db.session() as session:
        for name, adapter, lineage in (
            ("lora-two", True, [{"name": "lora-one", "id": "m1"}]),
            ("full-one", False, []),
        ):
            session.add(
                Model(
                    id=f"id-{name}",
                    workspace_id=_workspace_id(api),
                    name=name,
                    kind="finetuned",
                    uri=f"s3://bucket/models/id-{name}/",
                    spec={
                        "adapter": adapter,
                        "base_model_uri": "builtin://tiny-llama",
                        "lineage": lineage,
                    },
                )
            )
    response = create(
        api,
        tasks=[
            task(name="on-lora", base_model="lora-two"),
            task(name="on-full", base_model="full-one"),
        ],
    )
    assert response.status_code == 202, response.text
    with api.db.session() as session:
        specs = {t.name: t.spec for t in session.query(Task)}
    assert specs["on-lora"]["base_model_uri"] == "builtin://tiny-llama"
    assert specs["on-lora"]["adapter_uri"] == "s3://bucket/models/id-lora-two/"
    assert specs["on-lora"]["lineage"] == [
        {"name": "lora-two", "id": "id-lora-two"},
        {"name": "lora-one", "id": "m1"},
    ]
    assert specs["on-full"]["base_model_uri"] == "s3://bucket/models/id-full-one/"
    assert specs["on-full"].get("adapter_uri") is None
    assert specs["on-full"]["lineage"] == [{"name": "full-one", "id": "id-full-one"}]


def test_early_stopping_without_a_validation_set_is_refused_naming_the_fraction(api: Api) -> None:
    response = create(api, tasks=[task(overrides={"early_stopping_patience": 2})])
    error = assert_error(response, 422, "invalid")
    assert [d["field"] for d in error["details"]] == ["tasks[0].overrides.validation_fraction"]
    held = create(api, tasks=[task(overrides={"select": "best", "validation_fraction": 0.2})])
    assert held.status_code == 202, held.text


def test_a_dpo_group_trains_on_preference_pairs_only(api: Api) -> None:
    _ready_dataset(api, "prefs", "default", kind="preference")
    made = api.client.post(
        "/api/v1/parameter-groups",
        json={"name": "dpo", "preset": "tiny-dpo", "parameters": {"dpo_beta": 0.2}},
        headers=api.auth(),
    )
    assert made.status_code == 201, made.text
    assert made.json()["finetune_type"] == "DPO"
    assert made.json()["parameters"]["dpo_beta"] == 0.2
    listed = api.client.get("/api/v1/datasets/prefs", headers=api.auth()).json()
    assert listed["kind"] == "preference"
    refused = create(api, tasks=[task(parameter_group="dpo")])
    error = assert_error(refused, 422, "invalid")
    assert [d["field"] for d in error["details"]] == ["tasks[0].dataset"]
    assert "preference" in error["details"][0]["message"]
    # SFT may train on a preference set's chosen answers; DPO needs one.
    for group in ("dpo", "lora"):
        accepted = create(
            api, name=f"on-{group}", tasks=[task(parameter_group=group, dataset="prefs")]
        )
        assert accepted.status_code == 202, accepted.text
    not_scored = create(api, name="scored", evaluation="preference-accuracy")
    error = assert_error(not_scored, 422, "invalid")
    assert [d["field"] for d in error["details"]] == ["evaluation"]


def test_a_groups_finetune_type_and_its_parameters_must_agree(api: Api) -> None:
    response = api.client.post(
        "/api/v1/parameter-groups",
        json={"name": "torn", "finetune_type": "SFT", "parameters": {"finetune_type": "DPO"}},
        headers=api.auth(),
    )
    error = assert_error(response, 422, "invalid")
    assert [d["field"] for d in error["details"]] == ["parameters.finetune_type"]
    bad_loss = api.client.post(
        "/api/v1/parameter-groups",
        json={"name": "torn", "finetune_type": "DPO", "parameters": {"dpo_loss": "hinge"}},
        headers=api.auth(),
    )
    error = assert_error(bad_loss, 422, "invalid")
    assert [d["field"] for d in error["details"]] == ["parameters.dpo_loss"]


def test_a_grid_search_becomes_one_task_per_point(api: Api) -> None:
    search = {
        "method": "grid",
        "space": {"lora_rank": {"choice": [4, 8]}, "learning_rate": {"choice": [1e-3, 2e-3]}},
        "parallel": 2,
    }
    response = create(api, tasks=[task(overrides={"epochs": 3}, search=search)])
    assert response.status_code == 202, response.text
    tasks = response.json()["tasks"]
    assert [t["name"] for t in tasks] == ["t1-1", "t1-2", "t1-3", "t1-4"]
    assert [(t["parameters"]["lora_rank"], t["parameters"]["learning_rate"]) for t in tasks] == [
        (4, 1e-3),
        (4, 2e-3),
        (8, 1e-3),
        (8, 2e-3),
    ]
    assert all(t["parameters"]["epochs"] == 3 for t in tasks)  # the overrides stay
    assert tasks[2]["trial"] == {
        "search": "t1",
        "number": 3,
        "values": {"lora_rank": 8, "learning_rate": 1e-3},
        "parallel": 2,
    }


def test_a_random_search_draws_its_trials_seeded_within_the_space(api: Api) -> None:
    search = {
        "method": "random",
        "space": {"learning_rate": {"log_uniform": [1e-4, 1e-2]}, "lora_rank": {"choice": [8, 16]}},
        "trials": 5,
        "seed": 7,
    }
    first = create(api, name="one", tasks=[task(search=search)]).json()["tasks"]
    again = create(api, name="two", tasks=[task(search=search)]).json()["tasks"]
    assert len(first) == 5 and [t["parameters"] for t in first] == [t["parameters"] for t in again]
    for t in first:
        assert 1e-4 <= t["parameters"]["learning_rate"] <= 1e-2
        assert t["parameters"]["lora_rank"] in (8, 16)
    assert len({t["parameters"]["learning_rate"] for t in first}) == 5


@pytest.mark.parametrize(
    ("search", "field"),
    [
        (
            {"method": "grid", "space": {"lora_rank": {"choice": [8, 0]}}},
            "tasks[0].search.space.lora_rank",
        ),
        ({"method": "grid", "space": {"nope": {"choice": [1]}}}, "tasks[0].search.space.nope"),
        (
            {"method": "grid", "space": {"learning_rate": {"uniform": [0.001, 0.01]}}},
            "tasks[0].search.space.learning_rate",
        ),
        (
            {
                "method": "random",
                "space": {"learning_rate": {"uniform": [0.001, 5.0]}},
                "trials": 2,
            },
            "tasks[0].search.space.learning_rate",
        ),
        ({"method": "random", "space": {"lora_rank": {"choice": [8]}}}, "tasks[0].search.trials"),
        ({"method": "tpe", "space": {"lora_rank": {"choice": [8]}}}, "tasks[0].search.trials"),
        (
            {"method": "grid", "space": {"lora_rank": {"choice": [4, 8, 16]}}, "trials": 2},
            "tasks[0].search.space",
        ),
    ],
)
def test_a_bad_search_is_refused_naming_its_field_and_nothing_is_stored(
    api: Api, search: dict[str, Any], field: str
) -> None:
    error = assert_error(create(api, tasks=[task(search=search)]), 422, "invalid")
    assert [d["field"] for d in error["details"]] == [field], error
    assert api.count(Task) == 0


def test_a_tpe_search_starts_parallel_trials_and_keeps_the_names_of_the_rest(api: Api) -> None:
    search = {
        "method": "tpe",
        "space": {"learning_rate": {"log_uniform": [1e-4, 1e-2]}},
        "trials": 6,
        "parallel": 2,
    }
    body = create(api, name="tpe", tasks=[task(search=search)]).json()
    assert [t["name"] for t in body["tasks"]] == ["t1-1", "t1-2"]
    rates = [t["parameters"]["learning_rate"] for t in body["tasks"]]
    assert len(set(rates)) == 2 and all(1e-4 <= r <= 1e-2 for r in rates)
    # A later trial's name is reserved: a task may not take it.
    clash = create(api, name="clash", tasks=[task(search=search), task(name="t1-5")])
    error = assert_error(clash, 422, "invalid")
    assert [d["field"] for d in error["details"]] == ["tasks[0].search"]


def test_a_search_method_that_is_not_offered_is_refused_at_parse(api: Api) -> None:
    search = {"method": "bayes", "space": {"lora_rank": {"choice": [8]}}}
    error = assert_error(create(api, tasks=[task(search=search)]), 422, "invalid")
    assert error["details"][0]["field"] == "tasks.0.search.method"


def test_only_a_ready_lora_model_can_be_merged_and_the_merge_waits_as_merging(api: Api) -> None:
    with api.db.session() as session:
        for name, adapter in (("lora-one", True), ("full-one", False)):
            session.add(
                Model(
                    id=f"id-{name}",
                    workspace_id=_workspace_id(api),
                    name=name,
                    kind="finetuned",
                    uri=f"s3://bucket/models/id-{name}/",
                    spec={"adapter": adapter, "base_model_uri": "builtin://tiny-llama"},
                )
            )

    def merge(source: str, **body: Any) -> Any:
        return api.client.post(f"/api/v1/models/{source}/merge", json=body, headers=api.auth())

    for name in ("full-one", "tiny-llama"):
        assert "not a LoRA model" in assert_error(merge(name), 409, "conflict")["message"]
    assert_error(merge("nothing"), 404, "not_found")
    assert_error(merge("lora-one", name="full-one"), 409, "conflict")
    accepted = merge("lora-one")
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert (body["name"], body["status"], body["adapter"]) == ("lora-one-merged", "merging", False)
    assert body["merged_from"]["name"] == "lora-one"
    with api.db.session() as session:
        event = session.query(EventRecord).filter_by(type="model.merge_requested").one()
        assert event.data["source"] == "lora-one"
    # Not there yet: neither its files nor a service.
    files = api.client.get("/api/v1/models/lora-one-merged/files", headers=api.auth())
    assert_error(files, 409, "conflict")
    deploy = api.client.post(
        "/api/v1/services", json={"name": "early", "model": "lora-one-merged"}, headers=api.auth()
    )
    assert_error(deploy, 409, "conflict")
