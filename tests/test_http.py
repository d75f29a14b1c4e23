"""The HTTP functions in-process (real Redis broker, SQLite, local store): the contract's
conventions, and that a refused request stores nothing."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from tunelab.auth import create_token
from tunelab.db import Database
from tunelab.db.tables import Dataset, EventRecord, IdempotencyKey, Model, Webhook, Workspace
from tunelab.functions.app import create_app
from tunelab.settings import Settings
from tunelab.store import keys
from tunelab.store.local import LocalStore

CSV = b"question,answer\nWhat is 2+2?,4\n"
METRICS_TOKEN = "scraper-secret"


def upload(
    client: TestClient,
    metadata: Any,
    token: str,
    body: bytes = CSV,
    headers: dict[str, str] | None = None,
) -> Any:
    return client.post(
        "/api/v1/datasets",
        files={"file": ("faq.csv", body, "text/csv")},
        data={"metadata": metadata if isinstance(metadata, str) else json.dumps(metadata)},
        headers={"authorization": f"Bearer {token}", **(headers or {})},
    )


class Api:
    def __init__(
        self, client: TestClient, db: Database, tokens: dict[str, str], objects: Path
    ) -> None:
        self.client, self.db, self.tokens, self.objects = client, db, tokens, objects

    def auth(self, workspace: str = "acme") -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[workspace]}"}

    def count(self, model: Any) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)

    def stored_objects(self) -> list[Path]:
        return [p for p in self.objects.rglob("*") if p.is_file()]


def make_settings(tmp_path: Path, redis_url: str, queues: dict[str, str]) -> Settings:
    return Settings(
        data_dir=tmp_path,
        redis_url=redis_url,
        cpu_queue=queues["cpu"],
        gpu_queue=queues["gpu"],
        metrics_token=METRICS_TOKEN,
    )


@contextmanager
def app_api(settings: Settings) -> Iterator[Api]:
    """The API in-process on `settings` (its database migrated), with an admin token of
    workspaces `acme` and `globex`."""
    db = Database(settings.effective_database_url)
    db.migrate()
    tokens = {name: create_token(db, name) for name in ("acme", "globex")}
    try:
        with TestClient(create_app(settings, db=db)) as client:
            yield Api(client, db, tokens, settings.data_dir / "objects")
    finally:
        db.dispose()


@pytest.fixture
def api(tmp_path: Path, redis_url: str, queues: dict[str, str]) -> Iterator[Api]:
    with app_api(make_settings(tmp_path, redis_url, queues)) as api:
        yield api


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def test_an_unknown_route_is_a_404_in_the_contract_shape(api: Api) -> None:
    assert_error(api.client.get("/api/v1/nothing", headers=api.auth()), 404, "not_found")
    assert_error(api.client.get("/nowhere"), 404, "not_found")


def test_a_wrong_method_is_a_405_in_the_contract_shape(api: Api) -> None:
    assert_error(api.client.put("/api/v1/datasets", headers=api.auth()), 405, "method_not_allowed")


def test_no_token_or_a_wrong_one_is_401(api: Api) -> None:
    assert_error(api.client.get("/api/v1/datasets"), 401, "unauthorized")
    assert_error(
        api.client.get("/api/v1/datasets", headers={"authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )
    assert_error(
        api.client.get("/api/v1/datasets", headers={"authorization": "Basic x"}),
        401,
        "unauthorized",
    )


def test_malformed_json_is_400_and_stores_nothing(api: Api) -> None:
    response = api.client.post(
        "/api/v1/webhooks",
        content=b"{not json",
        headers={**api.auth(), "content-type": "application/json"},
    )
    assert_error(response, 400, "bad_request")
    response = api.client.post("/api/v1/webhooks", json=["a", "list"], headers=api.auth())
    assert_error(response, 400, "bad_request")
    assert api.count(Webhook) == 0


def test_invalid_metadata_is_422_naming_the_field_and_stores_nothing(api: Api) -> None:
    response = upload(api.client, {"name": "Bad_Name", "language": "fr"}, api.tokens["acme"])
    error = assert_error(response, 422, "invalid")
    assert {d["field"] for d in error["details"]} == {"name", "language"}
    assert_error(upload(api.client, "{oops", api.tokens["acme"]), 400, "bad_request")
    assert api.count(Dataset) == 0 and api.count(EventRecord) == 0
    assert api.stored_objects() == []


def test_an_upload_is_accepted_staged_and_announced(api: Api) -> None:
    response = upload(
        api.client, {"name": "faq", "labels": {"team": "support"}}, api.tokens["acme"]
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["name"], body["status"], body["labels"]) == ("faq", "pending", {"team": "support"})
    assert body["feature_mapping"] == {"question": "question", "answer": "answer"}
    events = api.client.get("/api/v1/events", headers=api.auth()).json()["items"]
    assert [e["type"] for e in events] == ["dataset.uploaded"]
    assert len(api.stored_objects()) == 1


def test_a_taken_name_is_409(api: Api) -> None:
    assert upload(api.client, {"name": "faq"}, api.tokens["acme"]).status_code == 202
    assert_error(upload(api.client, {"name": "faq"}, api.tokens["acme"]), 409, "conflict")
    assert api.count(Dataset) == 1 and len(api.stored_objects()) == 1


def test_another_workspaces_dataset_is_404(api: Api) -> None:
    assert upload(api.client, {"name": "faq"}, api.tokens["acme"]).status_code == 202
    assert_error(
        api.client.get("/api/v1/datasets/faq", headers=api.auth("globex")), 404, "not_found"
    )
    assert api.client.get("/api/v1/datasets", headers=api.auth("globex")).json() == {"items": []}
    assert api.client.get("/api/v1/events", headers=api.auth("globex")).json()["items"] == []


def test_a_repeated_idempotency_key_replays_the_first_response(api: Api) -> None:
    key = {"idempotency-key": "upload-1"}
    first = upload(api.client, {"name": "faq"}, api.tokens["acme"], headers=key)
    again = upload(api.client, {"name": "faq"}, api.tokens["acme"], headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert api.count(Dataset) == 1 and api.count(EventRecord) == 1


def test_an_idempotency_key_reused_with_another_body_is_422(api: Api) -> None:
    key = {"idempotency-key": "upload-1"}
    assert upload(api.client, {"name": "faq"}, api.tokens["acme"], headers=key).status_code == 202
    other = upload(api.client, {"name": "other"}, api.tokens["acme"], headers=key)
    assert_error(other, 422, "invalid")
    assert api.count(Dataset) == 1 and api.count(IdempotencyKey) == 1


def test_a_refused_request_is_replayed_like_any_other_answer(api: Api) -> None:
    key = {"idempotency-key": "k"}
    assert upload(api.client, {"name": "BAD"}, api.tokens["acme"], headers=key).status_code == 422
    replay = upload(api.client, {"name": "BAD"}, api.tokens["acme"], headers=key)
    assert replay.status_code == 422 and replay.headers["idempotent-replayed"] == "true"
    assert api.count(Dataset) == 0


def test_a_webhook_gets_a_secret_once_and_refuses_unknown_event_types(api: Api) -> None:
    created = api.client.post(
        "/api/v1/webhooks",
        headers=api.auth(),
        json={"name": "ops", "url": "http://127.0.0.1:9/hook", "events": ["dataset.validated"]},
    )
    assert created.status_code == 201
    assert created.json()["secret"].startswith("whsec_")
    assert "secret" not in api.client.get("/api/v1/webhooks/ops", headers=api.auth()).json()
    refused = api.client.post(
        "/api/v1/webhooks",
        headers=api.auth(),
        json={"url": "http://127.0.0.1:9/hook", "events": ["dataset.exploded"]},
    )
    assert assert_error(refused, 422, "invalid")["details"][0]["field"] == "events"
    assert api.client.get("/api/v1/webhooks/ops/deliveries", headers=api.auth()).json() == {
        "items": []
    }
    assert api.count(Webhook) == 1


def test_events_page_forward_from_a_cursor(api: Api) -> None:
    for name in ("a1", "a2", "a3"):
        upload(api.client, {"name": name}, api.tokens["acme"])
    newest_first = api.client.get("/api/v1/events", headers=api.auth()).json()["items"]
    assert [e["data"]["name"] for e in newest_first] == ["a3", "a2", "a1"]
    oldest = newest_first[-1]["id"]
    page = api.client.get(f"/api/v1/events?after={oldest}&limit=1", headers=api.auth()).json()
    assert [e["data"]["name"] for e in page["items"]] == ["a2"] and page["has_more"]
    assert_error(api.client.get("/api/v1/events?limit=0", headers=api.auth()), 422, "invalid")
    assert_error(api.client.get("/api/v1/events?after=nope", headers=api.auth()), 404, "not_found")


def test_health_readiness_and_metrics(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"broker": "ok", "database": "ok", "object_store": "ok"}
    upload(api.client, {"name": "faq"}, api.tokens["acme"])
    # The scraper's token, never a workspace's: the metrics hold every workspace's traffic.
    assert api.client.get("/metrics", headers=api.auth()).status_code == 401
    scraper = {"authorization": f"Bearer {METRICS_TOKEN}"}
    text = api.client.get("/metrics", headers=scraper).text
    assert (
        'tunelab_http_requests_total{method="POST",route="/api/v1/datasets",status="202"}' in text
    )
    assert 'tunelab_events_published_total{type="dataset.uploaded"}' in text
    assert "tunelab_queue_depth{" in text


def test_readiness_names_the_dependency_that_is_down(
    tmp_path: Path, queues: dict[str, str]
) -> None:
    from tests.services import free_port

    settings = make_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0", queues)
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["object_store"] == "ok"
    assert "ConnectionError" in checks["broker"]


def test_a_file_over_50_mb_is_413_and_nothing_is_kept(api: Api) -> None:
    chunk = b"question,answer\n" + b"x" * (1 << 20)
    response = upload(api.client, {"name": "huge"}, api.tokens["acme"], body=chunk * 51)
    assert_error(response, 413, "too_large")
    assert api.stored_objects() == [] and api.count(Dataset) == 0


def test_remote_sources_are_checked_before_anything_is_stored(api: Api) -> None:
    def create(source: dict[str, Any]) -> Any:
        return api.client.post(
            "/api/v1/datasets", headers=api.auth(), json={"name": "remote", "source": source}
        )

    error = assert_error(create({"type": "http", "uri": "ftp://example.com/x.csv"}), 422, "invalid")
    assert error["details"][0]["field"] == "source.http.uri"
    error = assert_error(create({"type": "plugin", "plugin": "nope"}), 422, "invalid")
    assert error["details"][0]["field"] == "source.plugin.plugin"
    assert_error(create({"type": "carrier-pigeon"}), 422, "invalid")
    assert api.count(Dataset) == 0


def test_a_remote_source_is_accepted_and_announced(api: Api) -> None:
    response = api.client.post(
        "/api/v1/datasets",
        headers=api.auth(),
        json={
            "name": "remote",
            "language": "zh",
            "source": {"type": "http", "uri": "https://example.com/faq.csv"},
        },
    )
    assert response.status_code == 202, response.text
    assert response.json()["source"] == {"type": "http", "uri": "https://example.com/faq.csv"}
    event = api.client.get("/api/v1/events", headers=api.auth()).json()["items"][0]
    assert event["data"]["sources"] == {"train": "https://example.com/faq.csv"}
    assert event["data"]["language"] == "zh"


def test_an_unknown_size_category_is_422(api: Api) -> None:
    response = upload(api.client, {"name": "faq", "size_category": "huge"}, api.tokens["acme"])
    assert assert_error(response, 422, "invalid")["details"][0]["field"] == "size_category"


def test_presigned_uploads_need_the_s3_store(api: Api) -> None:
    response = api.client.post("/api/v1/datasets/uploads", headers=api.auth(), json={"name": "faq"})
    assert "TUNELAB_STORE=s3" in assert_error(response, 422, "invalid")["message"]
    assert api.count(Dataset) == 0


def test_a_dataset_in_use_by_a_running_experiment_cannot_be_deleted(api: Api) -> None:
    from tunelab.db.tables import Experiment

    upload(api.client, {"name": "faq"}, api.tokens["acme"])
    with api.db.session() as session:
        workspace = session.scalars(select(Dataset)).one().workspace_id
        session.add(
            Experiment(
                workspace_id=workspace,
                name="exp",
                status="running",
                spec={
                    "evaluation": "rouge-bleu",
                    "cluster": "local",
                    "namespace": "default",
                    "tasks": [
                        {"name": "t1", "base_model": "b", "dataset": "faq", "parameter_group": "g"}
                    ],
                },
            )
        )
    response = api.client.delete("/api/v1/datasets/faq", headers=api.auth())
    assert "exp" in assert_error(response, 409, "conflict")["message"]
    with api.db.session() as session:
        session.scalars(select(Experiment)).one().status = "succeeded"
    assert api.client.delete("/api/v1/datasets/faq", headers=api.auth()).status_code == 200
    assert api.stored_objects() == []


def test_validate_and_test_files_travel_with_the_training_file(api: Api) -> None:
    response = api.client.post(
        "/api/v1/datasets",
        files={"file": ("train.csv", CSV), "validate": ("val.csv", CSV), "test": ("test.csv", CSV)},
        data={"metadata": json.dumps({"name": "splits"})},
        headers=api.auth(),
    )
    assert response.status_code == 202, response.text
    assert response.json()["source"]["files"] == {
        "train": "train.csv",
        "validate": "val.csv",
        "test": "test.csv",
    }
    event = api.client.get("/api/v1/events", headers=api.auth()).json()["items"][0]
    assert set(event["data"]["sources"]) == {"train", "validate", "test"}
    assert len(api.stored_objects()) == 3


def test_a_mapping_of_one_column_to_both_fields_is_422(api: Api) -> None:
    mapping = {"question": "text", "answer": "text"}
    response = upload(api.client, {"name": "faq", "feature_mapping": mapping}, api.tokens["acme"])
    error = assert_error(response, 422, "invalid")
    assert error["details"][0]["field"] == "feature_mapping"


def test_a_webhook_to_a_private_address_is_refused_by_default(
    tmp_path: Path, redis_url: str, queues: dict[str, str]
) -> None:
    settings = make_settings(tmp_path, redis_url, queues).model_copy(
        update={"webhook_allow_private": False}
    )
    db = Database(settings.effective_database_url)
    db.migrate()
    token = create_token(db, "acme")
    with TestClient(create_app(settings, db=db)) as client:
        response = client.post(
            "/api/v1/webhooks",
            headers={"authorization": f"Bearer {token}"},
            json={"url": "http://169.254.169.254/latest", "events": ["*"]},
        )
    db.dispose()
    error = assert_error(response, 422, "invalid")
    assert error["details"][0]["field"] == "url" and "private" in error["message"]


def test_a_body_that_ends_inside_a_file_is_400_and_leaves_nothing(api: Api) -> None:
    boundary = "xyz"
    body = (
        f'--{boundary}\r\ncontent-disposition: form-data; name="metadata"\r\n\r\n'
        f'{{"name": "cut"}}\r\n--{boundary}\r\ncontent-disposition: form-data; '
        f'name="file"; filename="faq.csv"\r\ncontent-type: text/csv\r\n\r\n'
        "question,answer\nhalf a ro"
    ).encode()
    headers = {**api.auth(), "content-type": f"multipart/form-data; boundary={boundary}"}
    response = api.client.post("/api/v1/datasets", content=body, headers=headers)
    assert "ended inside" in assert_error(response, 400, "bad_request")["message"]
    garbled = api.client.post(
        "/api/v1/datasets", content=b"--xyz\r\n\x00\x01garbage", headers=headers
    )
    assert_error(garbled, 400, "bad_request")
    assert api.stored_objects() == [] and api.count(Dataset) == 0


def test_an_oversized_body_with_an_idempotency_key_is_413_without_being_kept(api: Api) -> None:
    chunk = b"question,answer\n" + b"x" * (1 << 20)
    response = upload(
        api.client,
        {"name": "huge"},
        api.tokens["acme"],
        body=chunk * 52,
        headers={"idempotency-key": "big"},
    )
    assert_error(response, 413, "too_large")
    assert api.count(Dataset) == 0 and api.count(IdempotencyKey) == 0


def test_a_verified_token_is_trusted_for_seconds_and_a_revoked_one_refused_after(
    tmp_path: Path, redis_url: str, queues: dict[str, str]
) -> None:
    from datetime import UTC, datetime

    from tests.platform import wait_until
    from tunelab.db.tables import ApiToken

    settings = make_settings(tmp_path, redis_url, queues).model_copy(update={"token_cache_s": 0.5})
    db = Database(settings.effective_database_url)
    db.migrate()
    token = create_token(db, "acme")
    auth = {"authorization": f"Bearer {token}"}
    with TestClient(create_app(settings, db=db)) as client:
        assert client.get("/api/v1/workspace", headers=auth).json() == {"name": "acme"}
        with db.session() as session:
            session.execute(
                ApiToken.__table__.update().values(revoked_at=datetime.now(UTC))  # type: ignore[attr-defined]
            )
        wait_until(
            lambda: client.get("/api/v1/workspace", headers=auth).status_code == 401,
            "the revoked token to be refused",
            timeout=5,
        )
        refused = client.get("/v1/models", headers=auth)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"  # OpenAI's shape
    db.dispose()


def test_a_fine_tuned_models_files_are_listed_and_downloaded_as_one_tar(api: Api) -> None:
    store = LocalStore(api.objects)
    files = {
        "adapter_config.json": b'{"r": 16}',
        "adapter_model.safetensors": bytes(range(256)) * 41,  # not a multiple of 512
        "README.md": "# café\n".encode(),
    }
    with api.db.session() as session:
        workspace = session.query(Workspace).filter_by(name="acme").one()
        session.add(
            Model(
                id="m-take-away",
                workspace_id=workspace.id,
                name="take-away",
                kind="finetuned",
                uri=store.uri(keys.model_prefix("m-take-away")),
                spec={"adapter": True},
            )
        )
    for name, body in files.items():
        store.put_bytes(keys.model_prefix("m-take-away") + name, body)

    listed = api.client.get("/api/v1/models/take-away/files", headers=api.auth()).json()
    assert {f["name"]: f["bytes"] for f in listed["files"]} == {n: len(b) for n, b in files.items()}
    response = api.client.get("/api/v1/models/take-away/download", headers=api.auth())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-tar"
    assert int(response.headers["content-length"]) == len(response.content)
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == {f"take-away/{n}": b for n, b in files.items()}

    # Another workspace's model is not there; a base model's files are not the platform's.
    missing = api.client.get("/api/v1/models/take-away/download", headers=api.auth("globex"))
    assert_error(missing, 404, "not_found")
    assert_error(
        api.client.get("/api/v1/models/tiny-llama/files", headers=api.auth()), 409, "conflict"
    )
