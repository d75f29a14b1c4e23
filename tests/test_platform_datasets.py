"""Every way a dataset comes in, through the running platform (API, workers, Redis,
PostgreSQL and the S3 server), plus a worker killed in the middle of an ingestion."""

from __future__ import annotations

import json
import signal
from typing import Any

import boto3
import httpx
import pytest

from tests.platform import wait_until
from tests.platform_fixture import CSV, TRIGGER_SECRET, Platform
from tests.receiver import file_server

pytestmark = pytest.mark.integration


def create(platform: Platform, name: str, source: dict[str, Any], **metadata: Any) -> Any:
    response = platform.client.post(
        "/api/v1/datasets", json={"name": name, "source": source, **metadata}
    )
    assert response.status_code == 202, response.text
    return platform.wait_for_dataset(name, "ready", "failed")


def test_a_dataset_is_fetched_from_an_http_address(platform: Platform) -> None:
    with file_server({"/faq.csv": (200, {}, CSV.encode())}) as base:
        dataset = create(platform, "from-http", {"type": "http", "uri": f"{base}/faq.csv"})
    assert dataset["status"] == "ready", dataset
    assert dataset["stats"]["rows"] == 12


def test_an_unreachable_address_fails_the_dataset_with_the_reason(platform: Platform) -> None:
    with file_server({}) as base:
        dataset = create(platform, "from-404", {"type": "http", "uri": f"{base}/nothing.csv"})
    assert dataset["status"] == "failed"
    detail = dataset["error"]["details"][0]
    assert (detail["code"], detail["field"]) == ("source_unreachable", "source.uri")
    assert "HTTP 404" in detail["message"]


def test_a_dataset_is_read_from_another_s3_bucket(platform: Platform) -> None:
    s3 = platform.s3()
    s3.create_bucket(Bucket="team-data")
    s3.put_object(Bucket="team-data", Key="qa/faq.csv", Body=CSV.encode())
    dataset = create(platform, "from-s3", {"type": "s3", "uri": "s3://team-data/qa/faq.csv"})
    assert dataset["status"] == "ready", dataset


def test_the_alpaca_plugin_turns_instructions_into_conversations(platform: Platform) -> None:
    records = [
        {"instruction": f"Spell {i}", "input": "", "output": f"number {i}"} for i in range(12)
    ]
    body = "\n".join(json.dumps(r) for r in records).encode()
    with file_server({"/alpaca.jsonl": (200, {}, body)}) as base:
        dataset = create(
            platform,
            "from-alpaca",
            {"type": "plugin", "plugin": "alpaca", "parameters": {"uri": f"{base}/alpaca.jsonl"}},
        )
    assert dataset["status"] == "ready", dataset
    rows = platform.client.get("/api/v1/datasets/from-alpaca/preview?limit=1").json()["rows"]
    assert rows == [
        {
            "messages": [
                {"role": "user", "content": "Spell 0", "weight": None},
                {"role": "assistant", "content": "number 0", "weight": None},
            ]
        }
    ]


def test_a_presigned_upload_is_ingested_when_the_bucket_notifies(platform: Platform) -> None:
    kw = {
        "endpoint_url": platform.s3_endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
    sns = boto3.client("sns", **kw)
    topic = sns.create_topic(Name="tunelab-uploads")["TopicArn"]
    sns.subscribe(
        TopicArn=topic,
        Protocol="http",
        Endpoint=f"{platform.url}/triggers/s3?secret={TRIGGER_SECRET}",
    )
    sns.close()
    platform.s3().put_bucket_notification_configuration(
        Bucket=platform.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]
        },
    )

    created = platform.client.post(
        "/api/v1/datasets/uploads", json={"name": "presigned", "filename": "faq.csv"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "awaiting_upload"
    upload = created.json()["upload"]
    assert httpx.put(upload["url"], content=CSV.encode()).status_code == 200

    dataset = platform.wait_for_dataset("presigned", "ready", "failed")
    assert dataset["status"] == "ready", dataset

    # A repeated notification (S3 delivers at least once) starts nothing new.
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": platform.bucket}, "object": {"key": upload["key"]}},
    }
    again = httpx.post(
        f"{platform.url}/triggers/s3",
        headers={"authorization": f"Bearer {TRIGGER_SECRET}"},
        json={"Records": [record]},
    )
    assert again.json()["records"][0]["result"].startswith("ignored")
    uploaded = [
        e for e in platform.events(type="dataset.uploaded") if e["subject"] == "datasets/presigned"
    ]
    assert len(uploaded) == 1


def test_the_trigger_wants_its_secret_and_knows_minio_and_sns_forms(platform: Platform) -> None:
    url = f"{platform.url}/triggers/s3"
    assert httpx.post(url, json={"Records": []}).status_code == 401
    assert httpx.post(url, params={"secret": "wrong"}, json={"Records": []}).status_code == 401
    minio = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{platform.bucket}/uploads/x",
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "s3": {"bucket": {"name": platform.bucket}, "object": {"key": "elsewhere/x.csv"}},
            }
        ],
    }
    answer = httpx.post(url, params={"secret": TRIGGER_SECRET}, json=minio)
    assert answer.status_code == 200 and answer.json() == {"records": []}
    with file_server({"/confirm": (200, {}, b"<ConfirmSubscriptionResponse/>")}) as base:
        confirm = httpx.post(
            url,
            params={"secret": TRIGGER_SECRET},
            json={"Type": "SubscriptionConfirmation", "SubscribeURL": f"{base}/confirm"},
        )
    assert confirm.json() == {"confirmed": True}
    bad = httpx.post(url, params={"secret": TRIGGER_SECRET}, json={"nothing": 1})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


def test_exports_neutralise_formulas_and_html_stays_text(platform: Platform) -> None:
    csv = CSV + '=HYPERLINK("http://x"),click\n<script>alert(1)</script>,<b>bold</b>\n'
    platform.upload("risky", csv)
    dataset = platform.wait_for_dataset("risky", "ready", "failed")
    assert dataset["status"] == "ready", dataset
    assert {w["code"] for w in dataset["warnings"]} == {"formula_injection"}
    exported = platform.client.get("/api/v1/datasets/risky/export").text
    assert "'=HYPERLINK" in exported and "\n=HYPERLINK" not in exported
    rows = platform.client.get("/api/v1/datasets/risky/preview?limit=100").json()["rows"]
    assert {"question": "<script>alert(1)</script>", "answer": "<b>bold</b>"} in rows


def test_a_worker_killed_mid_ingestion_is_replaced_and_the_dataset_completes_once(
    platform: Platform,
) -> None:
    body = "question,answer\n" + "".join(
        f"Question number {i} about a long topic?,{'An answer with some words. ' * 20}{i}\n"
        for i in range(60_000)
    )
    platform.upload("big", body)
    wait_until(
        lambda: platform.client.get("/api/v1/datasets/big").json()["status"] == "validating",
        "ingestion to start",
        interval=0.01,
    )
    victim = next(
        p
        for name, p in platform.processes.children.items()
        if name.startswith("cpu-worker") and p.poll() is None
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    platform.processes.start("cpu-worker-replacement", "worker", "cpu")
    dataset = wait_until(
        lambda: (
            (d := platform.client.get("/api/v1/datasets/big").json())["status"]
            in ("ready", "failed")
            and d
        ),
        "the redelivered ingestion",
        timeout=90,
        interval=0.2,
    )
    assert dataset["status"] == "ready", dataset
    assert dataset["stats"]["rows"] == 60_000

    def validated() -> list[dict[str, Any]]:
        events = platform.events(type="dataset.validated")
        return [e for e in events if e["subject"] == "datasets/big"]

    # The event is recorded with the status; the listing may still be paging.
    assert len(wait_until(validated, "the dataset.validated event")) == 1


def test_a_file_put_under_the_workspace_upload_prefix_can_be_ingested(platform: Platform) -> None:
    platform.s3().put_object(Bucket=platform.bucket, Key="uploads/acme/mine.csv", Body=CSV.encode())
    dataset = create(platform, "from-upload", {"type": "upload", "uri": "uploads/acme/mine.csv"})
    assert dataset["status"] == "ready", dataset


@pytest.mark.parametrize(
    "source",
    [
        {"type": "s3", "uri": "s3://{bucket}/staging/datasets/x/train.csv"},
        {"type": "upload", "uri": "uploads/other-team/theirs.csv"},
        {"type": "upload", "uri": "uploads/acme/../other-team/theirs.csv"},
    ],
)
def test_the_platform_bucket_is_off_limits_outside_the_callers_uploads(
    platform: Platform, source: dict[str, str]
) -> None:
    source = {**source, "uri": source["uri"].format(bucket=platform.bucket)}
    response = platform.client.post("/api/v1/datasets", json={"name": "sneaky", "source": source})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "source.uri"
