"""The catalogue of bad files (tests/datasets/), each through the ingestion actor: the
dataset's status, the problem's code, and the line and field it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.actors import drain
from tunelab.auth import ensure_workspace
from tunelab.context import Context
from tunelab.db.tables import Dataset
from tunelab.events.dataset import DatasetUploaded, DatasetUploadedData
from tunelab.store import keys

FILES = Path(__file__).parent / "datasets"
MAPPING = {"question": "question", "answer": "answer"}


def ingest_file(ctx: Context, name: str, **metadata: Any) -> Dataset:
    with ctx.db.session() as session:
        workspace = ensure_workspace(session, "acme")
        dataset = Dataset(
            workspace_id=workspace.id,
            name=name.removesuffix(".csv"),
            metadata_={},
            source={"type": "upload"},
        )
        session.add(dataset)
    staged = ctx.store.put_bytes(keys.dataset_staging(dataset.id), (FILES / name).read_bytes())
    ctx.bus.publish(
        DatasetUploaded(
            workspace=workspace.id,
            data=DatasetUploadedData(
                dataset_id=dataset.id,
                name=dataset.name,
                sources={"train": ctx.store.uri(staged.key)},
                feature_mapping=metadata.pop("mapping", MAPPING),
                **metadata,
            ),
        )
    )
    drain(ctx)
    with ctx.db.session() as session:
        return session.get_one(Dataset, dataset.id)


# file, metadata, code, line, field
BAD = [
    ("empty.csv", {}, "empty_file", 1, None),
    ("encoding-gbk.csv", {}, "encoding", 2, None),
    ("encoding-utf16.csv", {}, "encoding", 1, None),
    ("nul-byte.csv", {}, "binary_content", 3, None),
    ("gzip.csv", {}, "compressed_file", 1, None),
    ("zip.csv", {}, "compressed_file", 1, None),
    ("excel.csv", {}, "compressed_file", 1, None),
    ("semicolons.csv", {}, "delimiter", 1, None),
    ("tabs.csv", {}, "delimiter", 1, None),
    ("unbalanced-quotes.csv", {}, "unbalanced_quotes", 6, None),
    ("too-many-fields.csv", {}, "wrong_field_count", 5, None),
    ("too-few-fields.csv", {}, "wrong_field_count", 7, None),
    ("no-header.csv", {}, "header_missing", 1, None),
    ("missing-column.csv", {}, "column_missing", 1, "feature_mapping.answer"),
    ("misspelt-column.csv", {}, "column_missing", 1, "feature_mapping.question"),
    ("duplicated-column.csv", {}, "column_duplicated", 1, "feature_mapping.answer"),
    ("empty-cell.csv", {}, "empty_cell", 9, "answer"),
    ("whitespace-cell.csv", {}, "empty_cell", 4, "question"),
    ("too-few-rows.csv", {}, "too_few_rows", None, None),
    ("good.csv", {"size_category": "1K<n<10K"}, "size_category_mismatch", None, "size_category"),
]


@pytest.mark.parametrize(
    ("name", "metadata", "code", "line", "field"), BAD, ids=[row[0] for row in BAD]
)
def test_a_bad_file_fails_naming_its_problem(
    ctx: Context,
    name: str,
    metadata: dict[str, Any],
    code: str,
    line: int | None,
    field: str | None,
) -> None:
    dataset = ingest_file(ctx, name, **metadata)
    assert dataset.status == "failed"
    assert dataset.error is not None and dataset.error["code"] == "dataset_invalid"
    first = dataset.error["details"][0]
    assert (first["code"], first.get("line"), first.get("field")) == (code, line, field), first
    assert first["file"] == "train" and first["message"]
    assert not ctx.store.exists(keys.dataset_parquet(dataset.id)), "no normalised data"


def test_a_misspelt_column_gets_a_suggestion(ctx: Context) -> None:
    dataset = ingest_file(ctx, "misspelt-column.csv")
    assert dataset.error is not None
    assert "did you mean 'questoin'?" in dataset.error["details"][0]["message"]


def test_the_encoding_is_named(ctx: Context) -> None:
    assert "UTF-16" in ingest_file(ctx, "encoding-utf16.csv").error["details"][0]["message"]


def test_a_file_with_many_problems_keeps_the_first_hundred_and_the_total(
    ctx: Context, tmp_path: Path
) -> None:
    body = "question,answer\n" + "".join(f"q{i}?,\n" for i in range(150))
    (FILES / "_generated-many.csv").write_text(body)
    try:
        dataset = ingest_file(ctx, "_generated-many.csv")
    finally:
        (FILES / "_generated-many.csv").unlink()
    assert dataset.error is not None
    assert dataset.error["total"] == 150 and len(dataset.error["details"]) == 100
    assert dataset.error["details"][99]["line"] == 101


def warnings_of(dataset: Dataset) -> dict[str, dict[str, Any]]:
    return {w["code"]: w for w in dataset.warnings or []}


def test_exact_duplicates_are_dropped_counted_and_reported(ctx: Context) -> None:
    dataset = ingest_file(ctx, "duplicates.csv")
    assert dataset.status == "ready"
    assert dataset.stats is not None
    assert (dataset.stats["train"]["rows"], dataset.stats["train"]["duplicates_dropped"]) == (12, 3)
    assert "3 exact duplicate" in warnings_of(dataset)["duplicate_rows"]["message"]


def test_a_declared_language_that_contradicts_the_text_is_a_warning(
    ctx: Context,
) -> None:
    english = ingest_file(ctx, "good.csv", language="zh")
    assert english.status == "ready"
    assert warnings_of(english)["language_mismatch"]["field"] == "language"
    chinese = ingest_file(ctx, "chinese.csv", language="zh")
    assert chinese.status == "ready" and "language_mismatch" not in warnings_of(chinese)


def test_formula_cells_are_flagged(ctx: Context) -> None:
    dataset = ingest_file(ctx, "formula.csv")
    assert dataset.status == "ready"
    warning = warnings_of(dataset)["formula_injection"]
    assert warning["line"] == 14 and "2 cells" in warning["message"]


@pytest.mark.parametrize("name", ["good-bom.csv", "multiline.csv", "html.csv", "chinese.csv"])
def test_well_formed_variants_are_ready(ctx: Context, name: str) -> None:
    dataset = ingest_file(ctx, name)
    assert dataset.status == "ready", dataset.error
    assert dataset.stats is not None and dataset.stats["train"]["rows"] >= 12
    assert dataset.stats["train"]["bytes"] == (FILES / name).stat().st_size


def test_a_redelivered_event_leaves_one_copy_of_the_rows(ctx: Context) -> None:
    dataset = ingest_file(ctx, "good.csv")
    objects = sorted(p.name for p in (ctx.store.root / "datasets").rglob("*"))  # type: ignore[attr-defined]
    with ctx.db.session() as session:
        session.get_one(Dataset, dataset.id).status = "validating"  # as if the worker died
    actor = ctx.bus.broker.get_actor("ingest_dataset")
    record = {
        "dataset_id": dataset.id,
        "name": dataset.name,
        "sources": {"train": ctx.store.uri(keys.dataset_staging(dataset.id))},
        "feature_mapping": MAPPING,
    }
    actor.send(DatasetUploaded(workspace=dataset.workspace_id, data=record).to_message())
    drain(ctx)
    assert sorted(p.name for p in (ctx.store.root / "datasets").rglob("*")) == objects  # type: ignore[attr-defined]


def test_a_ready_dataset_has_token_length_statistics(ctx: Context) -> None:
    dataset = ingest_file(ctx, "multiline.csv")
    assert dataset.stats is not None
    tokens = dataset.stats["train"]["tokens"]
    assert (
        0
        < tokens["question"]["min"]
        <= tokens["question"]["median"]
        <= tokens["question"]["p95"]
        <= tokens["question"]["max"]
    )
    assert tokens["block_size"] == 512 and tokens["rows_over_block_size"] == 0
    assert tokens["sampled"] is False


def test_rows_longer_than_the_block_size_are_counted(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunelab.tokenizer import build_tiny_tokenizer
    from tunelab.workers.cpu.ingest import token_stats

    rows = {"question": ["short?"] * 8 + ["long " * 300], "answer": ["yes"] * 9}
    pq.write_table(pa.table(rows), tmp_path / "t.parquet")
    tokenizer = build_tiny_tokenizer(vocab_size=512)
    stats = token_stats(tmp_path / "t.parquet", tokenizer, block_size=64)
    assert stats["rows_over_block_size"] == 1
    # The console's histogram: every row counted once, the long one in the last bin.
    histogram = stats["histogram"]
    assert sum(histogram["counts"]) == 9 and histogram["counts"][-1] == 1
    assert len(histogram["edges"]) == len(histogram["counts"]) + 1
    assert histogram["edges"] == sorted(histogram["edges"])
    sampled = token_stats(tmp_path / "t.parquet", tokenizer, block_size=64, max_rows=3)
    assert sampled["sampled"] is True and len(sampled) == len(stats)
