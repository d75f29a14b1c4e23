"""The console's static side without a browser: how it is served, the API calls added for
its forms, and message catalogues that cover every label the scripts use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tunelab.auth import create_token
from tunelab.db import Database
from tunelab.functions.app import create_app
from tunelab.functions.console import STATIC
from tunelab.params import Parameters
from tunelab.settings import Settings

SCRIPTS = sorted(STATIC.glob("*.js")) + sorted(STATIC.glob("pages/*.js"))
CATALOGUES = {p.stem: json.loads(p.read_text("utf-8")) for p in STATIC.glob("i18n/*.json")}


@pytest.fixture
def client(tmp_path: Path, redis_url: str, queues: dict[str, str]) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path, redis_url=redis_url, cpu_queue=queues["cpu"], gpu_queue=queues["gpu"]
    )
    db = Database(settings.effective_database_url)
    db.migrate()
    token = create_token(db, "acme")
    with TestClient(create_app(settings, db=db)) as client:
        client.headers["authorization"] = f"Bearer {token}"
        yield client
    db.dispose()


def test_the_console_is_served_without_a_token_and_under_a_strict_policy(
    client: TestClient,
) -> None:
    home = client.get("/", follow_redirects=False, headers={"authorization": ""})
    assert home.status_code == 307 and home.headers["location"] == "/console/"
    page = client.get("/console/", headers={"authorization": ""})
    assert page.status_code == 200 and '<div id="app">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    script = client.get("/console/assets/app.js", headers={"authorization": ""})
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == policy
    # Nothing the page loads comes from elsewhere: every asset it names is served here.
    for asset in re.findall(r'(?:src|href)="(/console/assets/[^"]+)"', page.text):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/console/assets/../../pyproject.toml").status_code == 404


def test_the_form_helpers_name_the_workspace_its_clusters_and_dataset_choices(
    client: TestClient,
) -> None:
    assert client.get("/api/v1/workspace").json() == {"name": "acme"}
    assert client.get("/api/v1/workspace", headers={"authorization": ""}).status_code == 401
    (local,) = client.get("/api/v1/clusters").json()["items"]
    assert local["name"] == "local" and local["namespaces"] == ["default"]
    assert local["gpus"]["cpu"] == 0
    options = client.get("/api/v1/dataset-options").json()
    assert {p["name"] for p in options["plugins"]} >= {"alpaca", "chat-jsonl"}
    assert options["size_categories"][0] == "n<1K" and options["languages"] == ["zh", "en"]
    schema = client.get("/api/v1/parameter-presets").json()["schema"]
    assert (
        schema["learning_rate"]["exclusiveMinimum"] == 0 and schema["learning_rate"]["maximum"] == 1
    )
    assert schema["scheduler"]["enum"] == ["cosine", "linear", "constant"]


def test_both_catalogues_hold_the_same_messages_with_the_same_placeholders() -> None:
    assert set(CATALOGUES) == {"en", "zh"}
    assert CATALOGUES["en"].keys() == CATALOGUES["zh"].keys()
    for key, english in CATALOGUES["en"].items():
        placeholders = set(re.findall(r"\{(\w+)\}", english))
        assert placeholders == set(re.findall(r"\{(\w+)\}", CATALOGUES["zh"][key])), key


def test_every_message_a_script_asks_for_is_in_the_catalogues() -> None:
    keys = CATALOGUES["en"].keys()
    for script in SCRIPTS:
        for key in re.findall(r'\bt\("([^"]+)"', script.read_text("utf-8")):
            assert key in keys, f"{script.name} asks for {key!r}"
    # Keys built at run time: every parameter, status, split and language has its label.
    for field in Parameters.model_fields:
        assert f"param.{field}" in keys, field
    for family, members in {
        "status": [
            "pending",
            "validating",
            "ready",
            "failed",
            "queued",
            "running",
            "training",
            "evaluating",
            "succeeded",
            "cancelled",
            "deploying",
            "starting",
        ],
        "split": ["train", "validate", "test"],
        "language": ["en", "zh"],
        "models.kind": ["base", "finetuned"],
    }.items():
        for member in members:
            assert f"{family}.{member}" in keys or f"{family}_{member}" in keys, member


# Text between tags in a template is a label and must come from a catalogue; these are
# names, not words to translate.
UNTRANSLATED = {"tunelab", "SFT", "min", "max", "p95"}


def test_no_label_is_written_into_a_template() -> None:
    for script in SCRIPTS:
        text = script.read_text("utf-8")
        # Text between a tag's end and the next tag, outside any ${...} expression.
        for words in re.findall(r">([^<>{}$`]*[A-Za-z\u4e00-\u9fff][^<>{}$`]*)<", text):
            assert words.strip() in UNTRANSLATED, f"{script.name}: {words.strip()!r}"
