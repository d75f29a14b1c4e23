"""Checking a staged dataset file and storing its validated copy: plain functions."""

from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from typing import Any

from tunelab.errors import PermanentFailure
from tunelab.store import ObjectStore, keys


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
                    {
                        "field": f"feature_mapping.{field}",
                        "line": 1,
                        "message": f"column {col!r} not in header {header}",
                    }
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
