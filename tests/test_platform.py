"""The whole platform in separate processes over loopback: API, CPU worker and GPU
worker against real Redis, PostgreSQL and an S3 server."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from tests.platform import wait_until
from tests.platform_fixture import Platform
from tests.receiver import webhook_receiver
from tests.services import free_port

pytestmark = pytest.mark.integration


def test_an_uploaded_dataset_flows_to_ready_through_the_cpu_worker(platform: Platform) -> None:
    accepted = platform.upload("faq")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "pending"

    dataset = platform.wait_for_dataset("faq", "ready", "failed")
    assert dataset["status"] == "ready", dataset
    assert dataset["stats"]["rows"] == 12

    types = [e["type"] for e in platform.events() if e["subject"] == "datasets/faq"]
    assert types == ["dataset.validated", "dataset.uploaded"]
    preview = platform.client.get("/api/v1/datasets/faq/preview?limit=2").json()
    assert preview["rows"] == [
        {"question": "What is 2+2?", "answer": "4"},
        {"question": "Capital of France?", "answer": "Paris"},
    ]
    listing = platform.s3().list_objects_v2(Bucket=platform.bucket)
    keys = [o["Key"] for o in listing["Contents"]]
    assert any(k.startswith("datasets/") and k.endswith("/train.parquet") for k in keys)


def test_a_file_without_the_mapped_columns_fails_with_line_and_field(platform: Platform) -> None:
    platform.upload("broken", "prompt,reply\nhi,hello\n")
    dataset = platform.wait_for_dataset("broken", "ready", "failed")
    assert dataset["status"] == "failed"
    assert dataset["error"]["total"] == 2
    first = dataset["error"]["details"][0]
    assert (first["code"], first["file"], first["line"], first["field"]) == (
        "column_missing",
        "train",
        1,
        "feature_mapping.question",
    )


def test_both_worker_kinds_answer_a_ping_seen_on_the_live_stream(platform: Platform) -> None:
    received: list[dict[str, Any]] = []
    connected = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(
                base_url=platform.url,
                timeout=20,
                headers={"authorization": f"Bearer {platform.token}"},
            ) as client,
            client.stream("GET", "/api/v1/events/stream") as stream,
        ):
            connected.set()
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    received.append(json.loads(line[5:]))
                    if sum(e["type"] == "system.pong" for e in received) == 2:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    ping_id = platform.client.post("/api/v1/system/ping").json()["event_id"]
    listener.join(timeout=20)
    pongs = [e for e in received if e["type"] == "system.pong"]
    assert {p["data"]["worker"] for p in pongs} == {"cpu", "gpu"}
    assert all(p["data"]["ping_id"] == ping_id for p in pongs)


def test_webhooks_arrive_signed_once_per_id_after_a_retry(platform: Platform) -> None:
    with webhook_receiver(statuses=[503]) as receiver:
        created = platform.client.post(
            "/api/v1/webhooks",
            json={"name": "ops", "url": receiver.url, "events": ["dataset.validated"]},
        ).json()
        platform.upload("hooked")
        platform.wait_for_dataset("hooked", "ready")

        def delivered() -> list[dict[str, Any]]:
            items = platform.client.get("/api/v1/webhooks/ops/deliveries").json()["items"]
            return [d for d in items if d["status"] == "delivered"]

        delivery = wait_until(delivered, "the webhook delivery")[0]
    assert [a.get("status_code") for a in delivery["attempts"]] == [503, 200]
    seen: dict[str, dict[str, Any]] = {}
    for headers, body in receiver.requests:
        seen[headers["webhook-id"]] = Verifier(created["secret"]).verify(body, headers)
    assert list(seen) == [delivery["id"]]
    assert seen[delivery["id"]]["data"]["name"] == "hooked"
    platform.client.delete("/api/v1/webhooks/ops")


def test_a_delivery_that_fails_every_retry_is_shown_as_dead(platform: Platform) -> None:
    platform.client.post(
        "/api/v1/webhooks",
        json={"name": "void", "url": f"http://127.0.0.1:{free_port()}/", "events": ["system.ping"]},
    )
    platform.client.post("/api/v1/system/ping")

    def dead() -> list[dict[str, Any]]:
        items = platform.client.get("/api/v1/dead-letters").json()["items"]
        return [d for d in items if d["actor"] == "deliver_webhook"]

    letter = wait_until(dead, "the dead letter")[0]
    assert "DeliveryFailed" in letter["error"] and letter["retries"] >= 2
    assert wait_until(lambda: platform.events(type="message.dead"), "message.dead")
    deliveries = platform.client.get("/api/v1/webhooks/void/deliveries").json()["items"]
    assert deliveries[0]["status"] == "failed" and len(deliveries[0]["attempts"]) == 3
    platform.client.delete("/api/v1/webhooks/void")


def test_metrics_count_what_the_workers_consumed(platform: Platform) -> None:
    platform.upload("counted")
    platform.wait_for_dataset("counted", "ready")
    consumed = 'tunelab_events_consumed_total{actor="ingest_dataset",outcome="ok"}'

    # The worker counts a message once its actor has returned, just after the status.
    def metrics_text() -> str | None:
        text = platform.metrics()
        return text if consumed in text else None

    text = wait_until(metrics_text, "the consumed counter")
    assert consumed in text
    assert 'tunelab_events_published_total{type="dataset.validated"}' in text
    assert "tunelab_queue_depth{" in text


def test_readiness_checks_every_dependency(platform: Platform) -> None:
    body = httpx.get(f"{platform.url}/readyz").json()
    assert body["status"] == "ready"
    assert body["checks"] == {"broker": "ok", "database": "ok", "object_store": "ok"}
    # No vLLM in this environment: it says that the fallback serves.
    assert body["serving"]["engine"] == "transformers"
    assert "vLLM is not installed" in body["serving"]["note"]


def test_a_token_is_stored_only_as_a_hash(platform: Platform, tmp_path: Path) -> None:
    assert platform.token.startswith("tl_") and len(platform.token) > 40
