"""Ingestion as plain functions: stage every split, check it, store it as Parquet.

Nothing normalised is stored unless every split passes; keys derive from the dataset
id, so a redelivered event overwrites what an interrupted run left.
"""

from __future__ import annotations

import csv
import functools
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from tunelab.store import ObjectStore, keys
from tunelab.workers.cpu.csvcheck import MAX_REPORTED, MIN_ROWS, check_file

MAX_TOKENIZED_ROWS = 200_000
TEMPLATE_TOKENS = 8
"""Tokens a chat template adds around a question and its answer, roughly."""


@dataclass
class IngestResult:
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_total: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error_total == 0

    def error_json(self) -> dict[str, Any]:
        first = self.errors[0]["message"] if self.errors else ""
        return {
            "code": "dataset_invalid",
            "message": f"The dataset has {self.error_total} problem(s); first: {first}",
            "details": self.errors,
            "total": self.error_total,
        }


class ParquetSink:
    """Collects checked rows into a local Parquet file, written as they arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None

    def __call__(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def token_stats(
    path: Path, tokenizer: Tokenizer, block_size: int, max_rows: int = MAX_TOKENIZED_ROWS
) -> dict[str, Any]:
    """Question/answer token lengths, and how many rows overflow `block_size`.

    Past `max_rows` an evenly spaced sample is measured (tokenizing runs at a few MB/s
    on a small CPU) and the overflow count is scaled up; `sampled` says so.
    """
    parquet = pq.ParquetFile(path)
    stride = max(1, -(-parquet.metadata.num_rows // max_rows))
    lengths: dict[str, list[int]] = {"question": [], "answer": []}
    seen = 0
    for batch in parquet.iter_batches(batch_size=8192):
        picked = [i for i in range(batch.num_rows) if (seen + i) % stride == 0]
        seen += batch.num_rows
        for column in lengths:
            texts = batch.column(column).take(picked).to_pylist()
            lengths[column] += [len(e.ids) for e in tokenizer.encode_batch_fast(texts)]
    totals = np.add(lengths["question"], lengths["answer"]) + TEMPLATE_TOKENS
    over = int((totals > block_size).sum()) * stride
    stats: dict[str, Any] = {
        column: _summary(np.asarray(values)) for column, values in lengths.items()
    }
    stats.update(
        block_size=block_size,
        rows_over_block_size=over,
        sampled=stride > 1,
        histogram=_histogram(totals),
    )
    return stats


def _histogram(totals: np.ndarray, bins: int = 20) -> dict[str, list[int]]:
    """Counts of rendered sample lengths (question + answer + template) in up to `bins`
    integer-edged bins, for the console's token-length chart."""
    if not totals.size:
        return {"edges": [], "counts": []}
    low, high = int(totals.min()), int(totals.max()) + 1
    edges = np.unique(np.linspace(low, high, bins + 1).round().astype(int))
    counts, _ = np.histogram(totals, bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _summary(values: np.ndarray) -> dict[str, int]:
    if not values.size:
        return {}
    return {
        "min": int(values.min()),
        "median": int(np.median(values)),
        "p95": int(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def ingest(
    dataset_id: str,
    staged: dict[str, str],
    mapping: dict[str, str],
    store: ObjectStore,
    *,
    language: str = "en",
    size_category: str | None = None,
    tokenizer: Tokenizer | None = None,
    block_size: int = 512,
) -> IngestResult:
    """Check each staged split (key by split name) and store the normalised rows."""
    result = IngestResult()
    with tempfile.TemporaryDirectory(prefix="tunelab-ingest-") as tmp:
        sinks = {}
        for split, key in staged.items():
            sink = sinks[split] = ParquetSink(Path(tmp) / f"{split}.parquet")
            train = split == "train"
            report = check_file(
                functools.partial(store.open, key),
                mapping,
                sink,
                language=language,
                declared_size=size_category if train else None,
                min_rows=MIN_ROWS if train else 1,
            )
            sink.close()
            room = MAX_REPORTED - len(result.errors)
            result.errors += [p.to_json(split) for p in report.errors[: max(room, 0)]]
            result.error_total += report.error_total
            result.warnings += [p.to_json(split) for p in report.warnings]
            result.stats[split] = {**report.stats, "bytes": store.size(key)}
        if not result.ok:
            return result
        for split, sink in sinks.items():
            if tokenizer is not None:
                result.stats[split]["tokens"] = token_stats(sink.path, tokenizer, block_size)
            with sink.path.open("rb") as data:
                stored = store.put_stream(keys.dataset_parquet(dataset_id, split), data)
            result.files[split] = store.uri(stored.key)
            result.stats[split]["parquet_bytes"] = stored.size
    return result


def write_rows_csv(rows: Any, store: ObjectStore, key: str) -> None:
    """Store (question, answer) pairs as a CSV file (a plugin's output, for checking)."""
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as out:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(text)
        writer.writerow(["question", "answer"])
        writer.writerows(rows)
        text.detach()
        out.seek(0)
        store.put_stream(key, out)
