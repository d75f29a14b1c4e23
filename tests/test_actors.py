"""Actors through a StubBroker and an in-thread Worker: no Redis, real logic."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook as Verifier

from tests.actors import drain
from tests.receiver import webhook_receiver
from tunelab.auth import ensure_workspace
from tunelab.context import Context
from tunelab.db.tables import Dataset, DeadLetter, EventRecord, Webhook, WebhookDelivery
from tunelab.events.dataset import DatasetUploaded, DatasetUploadedData
from tunelab.store import keys
from tunelab.store.local import LocalStore
from tunelab.workers.cpu.ingest import ingest
from tunelab.workers.middleware import resend_give_ups
from tunelab.workers.registry import SPECS

GOOD_CSV = b"question,answer\n" + b"".join(
    f"What is {i}+{i}?,{2 * i}\n".encode() for i in range(12)
)


def stage_dataset(
    ctx: Context, body: bytes, mapping: dict[str, str] | None = None
) -> DatasetUploaded:
    with ctx.db.session() as session:
        workspace = ensure_workspace(session, "acme")
        dataset = Dataset(
            workspace_id=workspace.id, name="faq", metadata_={}, source={"type": "upload"}
        )
        session.add(dataset)
    staged = ctx.store.put_bytes(keys.dataset_staging(dataset.id), body)
    return DatasetUploaded(
        workspace=workspace.id,
        subject="datasets/faq",
        data=DatasetUploadedData(
            dataset_id=dataset.id,
            name="faq",
            sources={"train": ctx.store.uri(staged.key)},
            feature_mapping=mapping or {"question": "question", "answer": "answer"},
        ),
    )


def events_of(ctx: Context, type_: str) -> list[EventRecord]:
    with ctx.db.session() as session:
        return list(session.scalars(select(EventRecord).where(EventRecord.type == type_)))


def test_ingest_stores_checked_rows_as_parquet_under_the_dataset_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes(
        "staged.csv",
        b"q,a,extra\n" + b"".join(f"question {i}?,answer {i},x\n".encode() for i in range(12)),
    )
    result = ingest("d1", {"train": "staged.csv"}, {"question": "q", "answer": "a"}, store)
    assert result.ok and result.stats["train"]["rows"] == 12
    assert result.files == {"train": "local://datasets/d1/train.parquet"}
    rows = pq.read_table(tmp_path / "datasets/d1/train.parquet").to_pylist()
    assert rows[0] == {"question": "question 0?", "answer": "answer 0"}


def test_ingest_stores_nothing_when_a_split_fails(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("train.csv", GOOD_CSV)
    store.put_bytes("test.csv", b"prompt,answer\nhi,hello\n")
    result = ingest(
        "d1",
        {"train": "train.csv", "test": "test.csv"},
        {"question": "question", "answer": "answer"},
        store,
    )
    assert not result.ok
    assert result.errors[0] | {"message": ""} == {
        "code": "column_missing",
        "file": "test",
        "line": 1,
        "field": "feature_mapping.question",
        "message": "",
    }
    assert not store.exists("datasets/d1/train.parquet")


def test_an_uploaded_dataset_becomes_ready_and_is_announced(ctx: Context) -> None:
    event = stage_dataset(ctx, GOOD_CSV)
    ctx.bus.publish(event)
    drain(ctx)
    with ctx.db.session() as session:
        dataset = session.get(Dataset, event.data.dataset_id)
        assert dataset is not None and dataset.status == "ready"
        assert dataset.stats is not None and dataset.stats["train"]["rows"] == 12
    assert ctx.store.exists(keys.dataset_parquet(event.data.dataset_id))
    assert [e.data["dataset_id"] for e in events_of(ctx, "dataset.validated")] == [
        event.data.dataset_id
    ]


def test_a_redelivered_upload_publishes_the_same_outcome_once(ctx: Context) -> None:
    event = stage_dataset(ctx, GOOD_CSV)
    ctx.bus.publish(event)
    drain(ctx)
    ctx.bus.broker.enqueue(ctx.bus.broker.get_actor("ingest_dataset").message(event.to_message()))
    drain(ctx)
    assert len(events_of(ctx, "dataset.validated")) == 1


def test_a_bad_file_fails_the_dataset_with_line_and_field(ctx: Context) -> None:
    event = stage_dataset(ctx, b"prompt,reply\nhi,hello\n")
    ctx.bus.publish(event)
    drain(ctx)
    with ctx.db.session() as session:
        dataset = session.get(Dataset, event.data.dataset_id)
        assert dataset is not None and dataset.status == "failed"
        assert dataset.error is not None
        assert dataset.error["details"][0]["field"] == "feature_mapping.question"
    failed = events_of(ctx, "dataset.failed")
    assert failed[0].data["error"]["code"] == "dataset_invalid"


def test_a_message_that_fails_all_retries_is_recorded_as_dead(ctx: Context) -> None:
    event = stage_dataset(ctx, GOOD_CSV)
    ctx.store.delete(keys.dataset_staging(event.data.dataset_id))  # the file vanished
    actor = ctx.bus.broker.get_actor("ingest_dataset")
    actor.send_with_options(args=(event.to_message(),), max_retries=0)
    with pytest.raises(KeyError):
        drain(ctx)
    drain(ctx, fail_fast=False)  # the give-up, a message of its own
    with ctx.db.session() as session:
        dead = session.scalars(select(DeadLetter)).one()
    assert (dead.actor, dead.event_type, dead.workspace_id) == (
        "ingest_dataset",
        "dataset.uploaded",
        event.workspace,
    )
    assert "ObjectNotFound" in dead.error
    with ctx.db.session() as session:
        dataset = session.get_one(Dataset, event.data.dataset_id)
        assert dataset.status == "failed", "given up, not left validating"
        assert dataset.error is not None and "ObjectNotFound" in dataset.error["message"]
    assert [e.data["dataset_id"] for e in events_of(ctx, "dataset.failed")] == [
        event.data.dataset_id
    ]
    assert events_of(ctx, "message.dead")[0].data["message_id"] == dead.message_id


def dataset_status(ctx: Context, dataset_id: str) -> str:
    with ctx.db.session() as session:
        return session.get_one(Dataset, dataset_id).status


def test_a_give_up_that_fails_is_retried_until_it_has_run(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SPECS["ingest_dataset"]
    assert spec.give_up is not None
    calls: list[str] = []

    def flaky(event: Any, error: str) -> None:  # a fault that cannot be caused for real
        calls.append(error)
        if len(calls) == 1:
            raise ConnectionError("database went away")
        real(event, error)

    real = spec.give_up
    monkeypatch.setitem(SPECS, "ingest_dataset", replace(spec, give_up=flaky))
    event = stage_dataset(ctx, GOOD_CSV)
    ctx.store.delete(keys.dataset_staging(event.data.dataset_id))  # so ingestion dies
    actor = ctx.bus.broker.get_actor("ingest_dataset")
    actor.send_with_options(args=(event.to_message(),), max_retries=0)
    drain(ctx, fail_fast=False)
    assert len(calls) == 2, "the give-up ran again after its first try failed"
    assert dataset_status(ctx, event.data.dataset_id) == "failed"
    assert len(events_of(ctx, "message.dead")) == 1, "announced once, whatever the give-up did"
    with ctx.db.session() as session:
        assert session.scalars(select(DeadLetter)).one().compensated_at is not None


def test_a_give_up_recorded_but_never_sent_runs_when_a_worker_starts(ctx: Context) -> None:
    event = stage_dataset(ctx, GOOD_CSV)
    ctx.bus.publish(event)
    drain(ctx)  # ingested; now pretend its message died and the worker with it
    with ctx.db.session() as session:
        session.get_one(Dataset, event.data.dataset_id).status = "validating"
        session.add(
            DeadLetter(
                message_id="m-1",
                workspace_id=event.workspace,
                queue=ctx.settings.cpu_queue,
                actor="ingest_dataset",
                event_id=event.id,
                event_type=event.type,
                retries=3,
                error="WorkerLost: killed",
            )
        )
    resend_give_ups(ctx, "cpu")
    drain(ctx)
    assert dataset_status(ctx, event.data.dataset_id) == "failed"
    resend_give_ups(ctx, "cpu")  # the next start finds nothing left to do
    with ctx.db.session() as session:
        assert session.scalars(select(DeadLetter)).one().compensated_at is not None
    assert not ctx.bus.broker.queues[ctx.settings.cpu_queue].qsize()


def test_webhooks_are_signed_retried_and_logged(ctx: Context) -> None:
    with webhook_receiver(statuses=[500]) as receiver:
        with ctx.db.session() as session:
            workspace = ensure_workspace(session, "acme")
            hook = Webhook(
                workspace_id=workspace.id,
                name="ops",
                url=receiver.url,
                events=["dataset.validated"],
                secret="whsec_" + "c2VjcmV0" * 4,
            )
            session.add(hook)
        ctx.bus.publish(stage_dataset(ctx, GOOD_CSV))
        drain(ctx)
    assert len(receiver.requests) == 2  # a 500, then the retry that succeeded
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert len(ids) == 1, "a retry keeps its webhook-id so receivers can de-duplicate"
    headers, body = receiver.requests[-1]
    payload = Verifier(hook.secret).verify(body, headers)
    assert payload["type"] == "dataset.validated"
    with ctx.db.session() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.status == "delivered"
        assert [a["status_code"] for a in delivery.attempts] == [500, 200]
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
    json.loads(body)  # the body is the event's JSON envelope


def test_a_webhook_that_never_answers_ends_failed_and_dead(ctx: Context) -> None:
    with ctx.db.session() as session:
        workspace = ensure_workspace(session, "acme")
        session.add(
            Webhook(
                workspace_id=workspace.id,
                name="gone",
                url="http://127.0.0.1:9/x",
                events=["*"],
                secret="whsec_" + "c2VjcmV0" * 4,
            )
        )
    ctx.bus.publish(stage_dataset(ctx, GOOD_CSV))
    with pytest.raises(Exception, match="delivery"):
        drain(ctx)
    drain_until_idle(ctx)
    with ctx.db.session() as session:
        statuses = {d.event_type: d.status for d in session.scalars(select(WebhookDelivery))}
        dead = session.scalars(select(DeadLetter)).all()
    assert statuses == {"dataset.uploaded": "failed", "dataset.validated": "failed"}
    assert [d.actor for d in dead] == ["deliver_webhook", "deliver_webhook"]


def drain_until_idle(ctx: Context) -> None:
    """Join again after a fail-fast join re-raised, until no retry is left."""
    broker: Any = ctx.bus.broker
    for _ in range(20):
        try:
            broker.join(ctx.settings.cpu_queue, fail_fast=True)
            return
        except Exception:
            continue
