"""Event schemas: one union parses every type; envelopes are frozen and well-named."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from tunelab.db import Database
from tunelab.events.bus import EventBus
from tunelab.events.catalog import EVENT_TYPES, ROUTES, parse_event
from tunelab.events.dataset import DatasetUploaded, DatasetUploadedData, DatasetValidated
from tunelab.events.experiment import TaskScheduled, TaskScheduledData
from tunelab.events.system import Ping, PingData, Pong


def uploaded() -> DatasetUploaded:
    return DatasetUploaded(
        workspace="w1",
        subject="datasets/faq",
        data=DatasetUploadedData(
            dataset_id="d1",
            name="faq",
            sources={"train": "local://x.csv"},
            feature_mapping={"question": "q", "answer": "a"},
        ),
    )


def test_an_event_survives_a_round_trip_through_its_message_body() -> None:
    event = uploaded()
    parsed = parse_event(event.to_message())
    assert parsed == event
    assert isinstance(parsed, DatasetUploaded)


def test_the_envelope_uses_cloudevents_attribute_names() -> None:
    body = uploaded().to_message()
    assert {"specversion", "id", "source", "type", "time", "subject", "data"} <= body.keys()
    assert body["type"] == "dataset.uploaded"


def test_events_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        uploaded().subject = "other"  # type: ignore[misc]


def test_an_unknown_event_type_is_refused() -> None:
    body = uploaded().to_message() | {"type": "dataset.exploded"}
    with pytest.raises(pydantic.ValidationError, match=r"dataset\.exploded"):
        parse_event(body)


def test_a_payload_with_a_wrong_field_is_refused() -> None:
    body = uploaded().to_message()
    body["data"]["dataset_id"] = None
    with pytest.raises(pydantic.ValidationError, match="dataset_id"):
        parse_event(body)


def test_a_follow_up_event_has_the_same_id_on_every_redelivery() -> None:
    cause = uploaded()
    data = {"dataset_id": "d1", "name": "faq", "stats": {}, "files": {}}
    first = DatasetValidated.following(cause, data=data)
    again = DatasetValidated.following(cause, data=data)
    assert first.id == again.id != cause.id
    assert first.workspace == "w1" and first.subject == "datasets/faq"


def test_a_pong_reports_how_long_its_ping_waited() -> None:
    ping = Ping(data=PingData(sent_at=0.0))
    pong = Pong.answering(ping, "gpu")
    assert pong.data.ping_id == ping.id and pong.data.worker == "gpu"
    assert pong.data.latency_ms > 0
    assert Pong.answering(ping, "cpu").id != pong.id, "each worker kind's answer is recorded"


def test_every_routed_event_type_is_a_known_type() -> None:
    assert set(ROUTES) <= set(EVENT_TYPES)


@pytest.mark.parametrize(
    ("backend", "actors"),
    [
        ("local", {"train_task"}),
        ("kubernetes", {"submit_task_job"}),
    ],
)
def test_the_backend_decides_who_takes_a_scheduled_task(
    backend: str, actors: set[str], tmp_path: Path
) -> None:
    """Locally a GPU worker trains the task; on Kubernetes a CPU worker makes its Job."""
    from dramatiq import Message
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    db.migrate()
    bus = EventBus(broker, db, lambda worker: f"q-{worker}", backend)
    broker.declare_queue("q-cpu")
    broker.declare_queue("q-train")
    event = TaskScheduled(
        workspace=None,
        subject="experiments/e/tasks/t",
        data=TaskScheduledData(
            experiment_id="e1", experiment="e", task_id="t1", task="t", cluster="local"
        ),
    )
    bus.publish(event)
    sent = {
        Message.decode(raw).actor_name
        for queue in ("q-cpu", "q-train")
        for raw in broker.queues[queue].queue
    }
    assert sent == actors
    db.dispose()
