"""Tried as an attacker with a second workspace's token would: the defects a hardening
pass found, each shown fixed (real Redis broker, SQLite, local store, in process)."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.platform import wait_until
from tests.test_http import METRICS_TOKEN, Api, assert_error, make_settings, upload
from tunelab.auth import create_token
from tunelab.db import Database
from tunelab.db.tables import (
    Dataset,
    EventRecord,
    IdempotencyKey,
    Model,
    Service,
    Workspace,
)
from tunelab.functions.app import ROUTES, create_app
from tunelab.quantity import parse_quantity
from tunelab.workers.cpu.sources import SourceError, SourceUnavailable, fetch_http


@pytest.fixture
def roles(tmp_path: Path, redis_url: str, queues: dict[str, str]) -> Iterator[Api]:
    """An app whose workspace `acme` has a token of each role, and `globex` an admin."""
    models = tmp_path / "operator-models"
    (models / "llama").mkdir(parents=True)
    settings = make_settings(tmp_path, redis_url, queues).model_copy(
        update={"model_roots": str(models), "token_cache_s": 0.3}
    )
    db = Database(settings.effective_database_url)
    db.migrate()
    tokens = {
        role: create_token(db, "acme", name=role, role=role)  # type: ignore[arg-type]
        for role in ("viewer", "member", "admin")
    }
    tokens["acme"] = tokens["admin"]
    tokens["globex"] = create_token(db, "globex")
    with TestClient(create_app(settings, db=db)) as client:
        yield Api(client, db, tokens, tmp_path / "objects")
    db.dispose()


def as_(api: Api, who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api.tokens[who]}"}


# 1. Model sources are the operator's choice; models can be deleted.


def test_base_models_come_only_from_the_operators_roots_never_the_object_store(
    roles: Api, tmp_path: Path
) -> None:
    def register(uri: str, who: str = "admin") -> Any:
        return roles.client.post(
            "/api/v1/models", json={"name": "m", "uri": uri}, headers=as_(roles, who)
        )

    objects = tmp_path / "objects" / "models" / "someone-elses"
    objects.mkdir(parents=True)
    for refused in ("/etc", str(objects), f"{tmp_path}/operator-models/../objects/models"):
        error = assert_error(register(refused), 422, "invalid")
        assert error["details"][0]["field"] == "uri", error
    assert_error(register("s3://any-bucket/llama"), 422, "invalid")
    assert_error(register(f"{tmp_path}/operator-models/llama", "member"), 403, "forbidden")
    assert register(f"{tmp_path}/operator-models/llama").status_code == 201
    listed = roles.client.get("/api/v1/models/m", headers=as_(roles, "viewer")).json()
    assert listed["uri"] == f"{tmp_path}/operator-models/llama"
    # Another workspace does not see it.
    assert_error(
        roles.client.get("/api/v1/models/m", headers=as_(roles, "globex")), 404, "not_found"
    )


def test_a_fine_tuned_model_is_deleted_with_its_files_unless_a_service_uses_it(
    roles: Api,
) -> None:
    with roles.db.session() as session:
        acme = session.scalar(select(Workspace).where(Workspace.name == "acme"))
        assert acme is not None
        model = Model(
            workspace_id=acme.id, name="tuned", kind="finetuned", uri="local://models/x/", spec={}
        )
        session.add(model)
        session.flush()
        service = Service(
            workspace_id=acme.id,
            name="bot",
            model="tuned",
            spec={"model_id": model.id, "request": {"name": "bot", "model": "tuned"}},
            status="ready",
        )
        session.add(service)
        model_id = model.id
    stored = roles.objects / "models" / model_id / "adapter_model.safetensors"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"weights")
    in_use = roles.client.delete("/api/v1/models/tuned", headers=as_(roles, "member"))
    assert "service 'bot'" in assert_error(in_use, 409, "conflict")["message"]
    with roles.db.session() as session:
        session.delete(session.get_one(Service, service.id))
    # Another workspace cannot see it, let alone delete it.
    assert_error(
        roles.client.delete("/api/v1/models/tuned", headers=as_(roles, "globex")), 404, "not_found"
    )
    assert (
        roles.client.delete("/api/v1/models/tuned", headers=as_(roles, "member")).status_code == 200
    )
    assert not stored.exists()
    assert_error(
        roles.client.get("/api/v1/models/tuned", headers=as_(roles, "admin")), 404, "not_found"
    )
    builtin = roles.client.delete("/api/v1/models/tiny-llama", headers=as_(roles, "admin"))
    assert_error(builtin, 409, "conflict")
    events = roles.client.get("/api/v1/events", headers=as_(roles, "admin")).json()["items"]
    assert "model.deleted" in {e["type"] for e in events}


# 2, 3, 4. One input boundary: NaN, depth, encoding, size.


def test_nan_in_a_body_is_refused_naming_where_and_nothing_is_stored(roles: Api) -> None:
    source = b'{"type": "plugin", "plugin": "alpaca", "parameters": {"uri": "x", "k": NaN}}'
    body = b'{"name": "nanny", "source": ' + source + b"}"
    response = roles.client.post(
        "/api/v1/datasets",
        content=body,
        headers={**as_(roles, "member"), "content-type": "application/json"},
    )
    error = assert_error(response, 400, "bad_request")
    assert error["details"][0]["field"] == "source.parameters.k", error
    assert roles.count(Dataset) == 0
    assert roles.client.get("/api/v1/datasets", headers=as_(roles, "member")).status_code == 200


def test_json_nested_2000_deep_is_400_on_every_json_route(roles: Api) -> None:
    deep = b"[" * 2000 + b"]" * 2000
    headers = {**as_(roles, "admin"), "content-type": "application/json"}
    for route in ROUTES:
        if not isinstance(route, Route) or "POST" not in (route.methods or ()):
            continue
        path = route.path.replace("{name}", "x").replace("{id}", "x").replace("{task}", "x")
        response = roles.client.post(path, content=deep, headers=headers)
        assert response.status_code < 500, (path, response.status_code, response.text[:300])
    response = roles.client.post("/api/v1/datasets", content=deep, headers=headers)
    assert "nested deeper" in assert_error(response, 400, "bad_request")["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not utf-8",
        json.dumps({"Type": "Notification", "Message": ["not", "an", "object"]}).encode(),
        json.dumps({"Type": "Notification", "Message": "[1, 2]"}).encode(),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": "a string"}]}).encode(),
        json.dumps(
            {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": 7}}}]}
        ).encode(),
        b"[" * 3000 + b"]" * 3000,
    ],
)
def test_the_s3_trigger_answers_a_broken_notification_with_400(
    tmp_path: Path, redis_url: str, queues: dict[str, str], body: bytes
) -> None:
    settings = make_settings(tmp_path, redis_url, queues).model_copy(
        update={"s3_trigger_secret": "s3cret"}
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/triggers/s3",
            content=body,
            headers={"authorization": "Bearer s3cret", "content-type": "application/json"},
        )
    assert_error(response, 400, "bad_request")


def test_a_body_over_its_limit_is_413_without_a_key_and_echoes_nothing(roles: Api) -> None:
    huge = b'{"name": "' + b"a" * (60 << 20) + b'"}'
    response = roles.client.post(
        "/api/v1/webhooks",
        content=huge,
        headers={**as_(roles, "admin"), "content-type": "application/json"},
    )
    assert_error(response, 413, "too_large")
    assert len(response.content) < 1000
    fields = {f"field{i}": "x" * 60_000 for i in range(1400)}  # 84 MB of form text
    response = roles.client.post(
        "/api/v1/datasets", data=fields, files={"nothing": ("", b"")}, headers=as_(roles, "member")
    )
    assert_error(response, 413, "too_large")
    assert roles.count(Dataset) == 0 and roles.stored_objects() == []


def test_an_error_echoes_at_most_an_excerpt_of_what_it_refuses(roles: Api) -> None:
    name = "x" * 100_000
    response = roles.client.post(
        "/api/v1/services", json={"name": "ok", "model": name}, headers=as_(roles, "member")
    )
    assert response.status_code == 422 and len(response.content) < 3000, len(response.content)


# 5. Names are matched whole.


def test_a_name_ending_in_a_newline_is_no_name(roles: Api) -> None:
    error = assert_error(
        upload(roles.client, {"name": "faq\n"}, roles.tokens["member"]), 422, "invalid"
    )
    assert error["details"][0]["field"] == "name"
    assert roles.count(Dataset) == 0


# 6. Pinned connections: one resolution, checked, is what is connected to.


def test_a_name_that_rebinds_to_loopback_is_never_fetched() -> None:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"question,answer\nsecret,42\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    answers = iter(["93.184.215.14", "127.0.0.1"])  # public when checked, loopback after

    def rebinding(host: str, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    sink = io.BytesIO()
    try:
        # The connection goes to the address that was checked (unreachable from here),
        # never to the loopback one a second resolution would have given.
        with pytest.raises(SourceUnavailable):
            fetch_http(
                f"http://rebind.example:{port}/data.csv",
                sink,
                max_bytes=1 << 20,
                timeout_s=1,
                allow_private=False,
                resolve=rebinding,
            )
        with pytest.raises(SourceError, match="private or loopback"):
            fetch_http(
                f"http://rebind.example:{port}/data.csv",
                sink,
                max_bytes=1 << 20,
                timeout_s=1,
                allow_private=False,
                resolve=rebinding,  # loopback from now on: refused before connecting
            )
    finally:
        server.shutdown()
        server.server_close()
    assert hits == [] and sink.getvalue() == b"", "the loopback server was reached"


# 7. Metrics, tokens, idempotency keys, quantities.


def test_metrics_take_the_scrapers_token_and_show_no_internal_ids(roles: Api) -> None:
    upload(roles.client, {"name": "counted"}, roles.tokens["member"])
    for who in ("viewer", "member", "admin"):
        assert roles.client.get("/metrics", headers=as_(roles, who)).status_code == 401
    text = roles.client.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert "tunelab_http_requests_total" in text
    assert not re.search(r"[0-9a-f]{32}", text), "an internal id is in the metrics"


def test_tokens_are_listed_made_and_revoked_by_admins_only(roles: Api) -> None:
    made = roles.client.post(
        "/api/v1/tokens",
        json={"name": "ci", "role": "viewer", "expires_in_days": 1},
        headers=as_(roles, "admin"),
    )
    assert made.status_code == 201, made.text
    secret = made.json()["token"]
    listed = roles.client.get("/api/v1/tokens", headers=as_(roles, "admin")).json()["items"]
    assert {t["name"] for t in listed} >= {"ci", "viewer", "member", "admin"}
    assert all("token" not in t and "token_hash" not in t for t in listed)
    for who in ("member", "viewer"):
        assert_error(roles.client.get("/api/v1/tokens", headers=as_(roles, who)), 403, "forbidden")
        denied = roles.client.post("/api/v1/tokens", json={"name": "x"}, headers=as_(roles, who))
        assert_error(denied, 403, "forbidden")
    ci = {"authorization": f"Bearer {secret}"}
    assert roles.client.get("/api/v1/datasets", headers=ci).status_code == 200
    assert roles.client.delete("/api/v1/tokens/ci", headers=as_(roles, "admin")).status_code == 200
    wait_until(
        lambda: roles.client.get("/api/v1/datasets", headers=ci).status_code == 401,
        "the revoked token to be refused",
        timeout=5,
    )


def test_an_expired_token_is_refused(roles: Api) -> None:
    token = create_token(roles.db, "acme", name="brief", expires_in=timedelta(seconds=0.5))
    headers = {"authorization": f"Bearer {token}"}
    wait_until(
        lambda: roles.client.get("/api/v1/datasets", headers=headers).status_code == 401,
        "the expired token to be refused",
        timeout=5,
    )


def test_a_viewer_may_read_but_every_post_and_delete_is_403(roles: Api) -> None:
    viewer = as_(roles, "viewer")
    assert roles.client.get("/api/v1/datasets", headers=viewer).status_code == 200
    for route in ROUTES:
        if not isinstance(route, Route) or not route.path.startswith(("/api/", "/v1/")):
            continue
        path = route.path.replace("{name}", "x").replace("{id}", "x")
        path = path.replace("{task}", "x").replace("{file}", "output")
        for method in (route.methods or set()) & {"POST", "DELETE", "PUT", "PATCH"}:
            response = roles.client.request(method, path, headers=viewer, json={})
            assert response.status_code == 403, (method, path, response.status_code)


def test_a_member_cannot_manage_tokens_webhooks_or_base_models(roles: Api) -> None:
    member = as_(roles, "member")
    for method, path in (
        ("POST", "/api/v1/tokens"),
        ("POST", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks"),
        ("POST", "/api/v1/models"),
        ("GET", "/api/v1/audit"),
    ):
        response = roles.client.request(method, path, headers=member, json={})
        assert_error(response, 403, "forbidden")
    assert upload(roles.client, {"name": "mine"}, roles.tokens["member"]).status_code == 202


def test_admins_read_who_changed_what(roles: Api) -> None:
    upload(roles.client, {"name": "audited"}, roles.tokens["member"])
    roles.client.delete("/api/v1/datasets/nothing", headers=as_(roles, "member"))

    def entries() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = roles.client.get(
            "/api/v1/audit", headers=as_(roles, "admin")
        ).json()["items"]
        return items if len(items) >= 2 else []

    items = wait_until(entries, "the audit entries to be written")
    assert [(i["method"], i["route"], i["status"], i["token"]) for i in items[:2]] == [
        ("DELETE", "/api/v1/datasets/{name}", 404, "member"),
        ("POST", "/api/v1/datasets", 202, "member"),
    ]
    other = roles.client.get("/api/v1/audit", headers=as_(roles, "globex")).json()["items"]
    assert other == [], "another workspace's audit log is its own"


def test_idempotency_keys_are_bounded_and_matched_on_the_parsed_body(roles: Api) -> None:
    member = {**as_(roles, "member"), "content-type": "application/json"}
    body = {"name": "hooked-group", "parameters": {"learning_rate": 0.001}}
    long_key = {**member, "idempotency-key": "k" * 256}
    assert_error(
        roles.client.post("/api/v1/parameter-groups", content=json.dumps(body), headers=long_key),
        400,
        "bad_request",
    )
    keyed = {**member, "idempotency-key": "same-one"}
    first = roles.client.post("/api/v1/parameter-groups", content=json.dumps(body), headers=keyed)
    assert first.status_code == 201, first.text
    reformatted = json.dumps(body, indent=4, sort_keys=True)
    again = roles.client.post("/api/v1/parameter-groups", content=reformatted, headers=keyed)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert roles.count(IdempotencyKey) == 1


def test_a_services_impossible_quantity_is_422_at_request_time(roles: Api) -> None:
    for memory in ({"request": "1Ei", "limit": "1Ei"}, {"request": "lots", "limit": "2Gi"}):
        response = roles.client.post(
            "/api/v1/services",
            json={"name": "big", "model": "tiny-llama", "resources": {"memory": memory}},
            headers=as_(roles, "member"),
        )
        error = assert_error(response, 422, "invalid")
        assert error["details"][0]["field"] == "resources.memory.request", error
    assert roles.count(Service) == 0 and roles.count(EventRecord) == 0


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Ei", 2**60),
        ("2Pi", 2 * 2**50),
        ("100n", 1e-7),
        ("5u", 5e-6),
        ("500m", 0.5),
        ("1e3", 1000),
    ],
)
def test_every_kubernetes_quantity_suffix_is_understood(text: str, value: float) -> None:
    assert float(parse_quantity(text)) == pytest.approx(value)
