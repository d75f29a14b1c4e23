"""Dataset ingestion: read the staged file, check it, store the validated copy."""

from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tunelab.db.models import Dataset
from tunelab.errors import PermanentFailure
from tunelab.events.dataset import (
    DatasetFailed,
    DatasetFailedData,
    DatasetUploaded,
    DatasetValidated,
    DatasetValidatedData,
)
from tunelab.store import ObjectStore, key_from_uri, keys
from tunelab.workers.context import current
from tunelab.workers.registry import subscriber


class DatasetInvalid(PermanentFailure):
    """The dataset file cannot be used; `details` say where."""

    code = "dataset_invalid"


@dataclass(frozen=True)
class IngestReport:
    stats: dict[str, Any]
    files: dict[str, str]


def ingest(
    dataset_id: str, source_key: str, mapping: dict[str, str], store: ObjectStore
) -> IngestReport:
    """Check the staged CSV and store it as question/answer rows under the dataset's key.

    Raises DatasetInvalid naming the line and field of the first problem.
    """
    question, answer = mapping["question"], mapping["answer"]
    with (
        store.open(source_key) as raw,
        tempfile.SpooledTemporaryFile(max_size=8 << 20) as out,
    ):
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text)
        header = reader.fieldnames or []
        missing = [(field, col) for field, col in mapping.items() if col not in header]
        if missing:
            raise DatasetInvalid(
                "The file's header lacks the mapped columns.",
                [
                    {"field": f"feature_mapping.{field}", "line": 1,
                     "message": f"column {col!r} not in header {header}"}
                    for field, col in missing
                ],
            )
        sink = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(sink)
        writer.writerow(["question", "answer"])
        rows = 0
        try:
            for row in reader:
                writer.writerow([row[question], row[answer]])
                rows += 1
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DatasetInvalid(
                "The file is not readable UTF-8 CSV.",
                [{"field": "file", "line": reader.line_num + 1, "message": str(exc)}],
            ) from None
        sink.detach()
        out.seek(0)
        stored = store.put_stream(keys.dataset_file(dataset_id), out)
    return IngestReport(
        stats={"rows": rows, "bytes": stored.size, "sha256": stored.sha256},
        files={"train": store.uri(stored.key)},
    )


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
            report = ingest(data.dataset_id, key_from_uri(data.source_uri),
                            data.feature_mapping, ctx.store)
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
            event, data=DatasetValidatedData(**ref, stats=dataset.stats or {},
                                             files=dataset.files or {})
        )
    return DatasetFailed.following(event, data=DatasetFailedData(**ref, error=dataset.error or {}))
