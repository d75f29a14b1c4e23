"""The ingestion actor: `dataset.uploaded` in, `dataset.validated` or `.failed` out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tunelab.db.models import Dataset
from tunelab.events.dataset import (
    DatasetFailed,
    DatasetFailedData,
    DatasetUploaded,
    DatasetValidated,
    DatasetValidatedData,
)
from tunelab.store import key_from_uri
from tunelab.workers.context import current
from tunelab.workers.cpu.ingest import DatasetInvalid, ingest
from tunelab.workers.registry import subscriber


@subscriber("dataset.uploaded", "cpu", max_retries=5)
def ingest_dataset(event: DatasetUploaded) -> None:
    ctx = current()
    data = event.data
    with ctx.db.session() as session:
        dataset = session.get(Dataset, data.dataset_id)
        if dataset is None:
            return  # deleted before we got to it
        if dataset.status in ("ready", "failed"):
            outcome = _outcome(event, dataset)  # a redelivery: announce the same outcome
        else:
            dataset.status = "validating"
            outcome = None
    if outcome is None:
        try:
            report = ingest(
                data.dataset_id, key_from_uri(data.source_uri), data.feature_mapping, ctx.store
            )
        except DatasetInvalid as exc:
            outcome = _finish(ctx, event, status="failed", error=exc.to_json()["error"])
        else:
            outcome = _finish(ctx, event, status="ready", stats=report.stats, files=report.files)
    ctx.bus.publish(outcome)


def _finish(ctx: Any, event: DatasetUploaded, **fields: Any) -> DatasetValidated | DatasetFailed:
    with ctx.db.session() as session:
        dataset = session.get(Dataset, event.data.dataset_id)
        for name, value in fields.items():
            setattr(dataset, name, value)
        dataset.updated_at = datetime.now(UTC)
        return _outcome(event, dataset)


def _outcome(event: DatasetUploaded, dataset: Dataset) -> DatasetValidated | DatasetFailed:
    ref = {"dataset_id": dataset.id, "name": dataset.name}
    if dataset.status == "ready":
        return DatasetValidated.following(
            event,
            data=DatasetValidatedData(**ref, stats=dataset.stats or {}, files=dataset.files or {}),
        )
    return DatasetFailed.following(event, data=DatasetFailedData(**ref, error=dataset.error or {}))
