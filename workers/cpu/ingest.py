"""Ingestion as plain functions: stage every split, check it, store it as Parquet.

Nothing normalised is stored unless every split passes; keys derive from the dataset
id, so a redelivered event overwrites what an interrupted run left.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from tunelab.store import ObjectStore, keys
from tunelab.workers.cpu.convcheck import check_conversations
from tunelab.workers.cpu.csvcheck import (
    HEAD_BYTES,
    MAX_REPORTED,
    MIN_ROWS,
    Opener,
    Problem,
    Report,
    check_file,
)

MAX_TOKENIZED_ROWS = 200_000
TEMPLATE_TOKENS = 8
"""Tokens a chat template adds around a question and its answer, roughly."""
MESSAGE_TOKENS = 4
"""Tokens a chat template adds around one message, roughly."""


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
    """Token lengths of the rendered samples, and how many overflow `block_size`: of the
    question and answer of pairs, of whole conversations (every message's content plus
    what the template adds around it), of a preference pair's prompt and longer answer.

    Past `max_rows` an evenly spaced sample is measured (tokenizing runs at a few MB/s
    on a small CPU) and the overflow count is scaled up; `sampled` says so.
    `first_over` is the index of the first overflowing row measured, or None.
    """
    parquet = pq.ParquetFile(path)
    stride = max(1, -(-parquet.metadata.num_rows // max_rows))
    names = parquet.schema_arrow.names
    is_chat = "messages" in names
    # Text columns measured on their own; a preference pair's longer answer counts.
    columns = [c for c in ("question", "answer", "prompt", "chosen", "rejected") if c in names]
    lengths: dict[str, list[int]] = {c: [] for c in columns}
    if is_chat:
        lengths["conversation"] = []
    rows: list[int] = []
    seen = 0
    for batch in parquet.iter_batches(batch_size=8192):
        picked = [i for i in range(batch.num_rows) if (seen + i) % stride == 0]
        rows += [seen + i for i in picked]
        seen += batch.num_rows
        if is_chat:
            chats = batch.column("messages").take(picked).to_pylist()
            contents = [m["content"] for chat in chats for m in chat]
            sizes = iter(len(e.ids) for e in tokenizer.encode_batch_fast(contents))
            lengths["conversation"] += [
                sum(next(sizes) + MESSAGE_TOKENS for _ in chat) for chat in chats
            ]
        for column in columns:
            texts = batch.column(column).take(picked).to_pylist()
            lengths[column] += [len(e.ids) for e in tokenizer.encode_batch_fast(texts)]
    if "chosen" in lengths:  # a pair: its prompt, and the longer of its answers
        prompt = lengths["conversation"] if is_chat else np.add(lengths["prompt"], MESSAGE_TOKENS)
        answer = np.maximum(lengths["chosen"], lengths["rejected"]) + MESSAGE_TOKENS
        totals = np.asarray(prompt, dtype=int) + answer
    elif is_chat:
        totals = np.asarray(lengths["conversation"], dtype=int)
    else:
        totals = np.add(lengths["question"], lengths["answer"]) + TEMPLATE_TOKENS
    over = np.flatnonzero(totals > block_size)
    stats: dict[str, Any] = {
        column: _summary(np.asarray(values)) for column, values in lengths.items()
    }
    stats.update(
        block_size=block_size,
        rows_over_block_size=int(over.size) * stride,
        sampled=stride > 1,
        histogram=_histogram(totals),
        first_over=rows[int(over[0])] if over.size else None,
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
    formats: dict[str, str] | None = None,
    language: str = "en",
    size_category: str | None = None,
    tokenizer: Tokenizer | None = None,
    block_size: int = 512,
) -> IngestResult:
    """Check each staged split (key by split name) and store the normalised rows.

    `formats` says what each split's file is: csv, openai, sharegpt, alpaca, or json (a
    record's keys tell which); for a split not named, its first bytes tell."""
    formats = formats or {}
    result = IngestResult()
    with tempfile.TemporaryDirectory(prefix="tunelab-ingest-") as tmp:
        sinks = {}
        lines: dict[str, list[int]] = {}
        for split, key in staged.items():
            sink = sinks[split] = ParquetSink(Path(tmp) / f"{split}.parquet")
            train = split == "train"
            opener = functools.partial(store.open, key)
            declared, min_rows = (size_category, MIN_ROWS) if train else (None, 1)
            fmt = formats.get(split) or sniff_format(opener)
            report: Report
            if fmt == "csv":
                report = check_file(
                    opener,
                    mapping,
                    sink,
                    language=language,
                    declared_size=declared,
                    min_rows=min_rows,
                )
            else:
                report = check_conversations(
                    opener, fmt, sink, declared_size=declared, min_rows=min_rows
                )
                lines[split] = report.row_lines
            sink.close()
            room = MAX_REPORTED - len(result.errors)
            result.errors += [p.to_json(split) for p in report.errors[: max(room, 0)]]
            result.error_total += report.error_total
            result.warnings += [p.to_json(split) for p in report.warnings]
            result.stats[split] = {**report.stats, "bytes": store.size(key)}
        _check_kinds(result)
        if not result.ok:
            return result
        for split, sink in sinks.items():
            if tokenizer is not None:
                tokens = result.stats[split]["tokens"] = token_stats(
                    sink.path, tokenizer, block_size
                )
                first = tokens.pop("first_over")
                if split in lines and first is not None:
                    result.warnings.append(
                        Problem(
                            "conversation_too_long",
                            f"{tokens['rows_over_block_size']} conversations are longer than "
                            f"{block_size} tokens; training keeps their first turns up to "
                            "block_size, or refuses them (the truncation parameter).",
                            lines[split][first],
                            "messages",
                        ).to_json(split)
                    )
            with sink.path.open("rb") as data:
                stored = store.put_stream(keys.dataset_parquet(dataset_id, split), data)
            result.files[split] = store.uri(stored.key)
            result.stats[split]["parquet_bytes"] = stored.size
    return result


def _check_kinds(result: IngestResult) -> None:
    """Every split holds preference pairs, or none does: a DPO task validates on pairs,
    an SFT task on answers."""
    preference = {s for s, stats in result.stats.items() if stats.get("kind") == "preference"}
    if result.ok and preference and preference != set(result.stats):
        other = sorted(set(result.stats) - preference)[0]
        result.error_total += 1
        result.errors.append(
            Problem(
                "split_kind_mismatch",
                f"The {sorted(preference)[0]} split holds preference pairs but the {other} "
                "split does not; every split of a dataset holds the same kind of rows.",
            ).to_json(other)
        )


def sniff_format(open_: Opener) -> str:
    """ "csv", or "json" for a JSON file (one JSON value per line, or one array)."""
    with open_() as stream:
        head = stream.read(HEAD_BYTES).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head.startswith((b"{", b"[")) else "csv"


def write_plugin_rows(
    rows: Iterable[Any], store: ObjectStore, key: str, record_format: str = "json"
) -> str:
    """Store a plugin's output for checking, and say its format: (question, answer)
    pairs as a CSV file, conversation records (in `record_format`) as JSON Lines."""
    items = iter(rows)
    first = next(items, None)
    pairs = first is None or isinstance(first, tuple | list)
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as out:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        if pairs:
            writer = csv.writer(text)
            writer.writerow(["question", "answer"])
            writer.writerows(itertools.chain([first] if first else [], items))
        else:
            for record in itertools.chain([first], items):
                text.write(json.dumps(record, ensure_ascii=False) + "\n")
        text.detach()
        out.seek(0)
        store.put_stream(key, out)
    return "csv" if pairs else record_format
