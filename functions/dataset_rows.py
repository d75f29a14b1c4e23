"""Reading a ready dataset's normalised rows: preview and CSV export."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import pyarrow.parquet as pq
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from tunelab.dataset_rules import neutralise
from tunelab.errors import Conflict, Invalid, NotFound
from tunelab.functions.datasets import find
from tunelab.functions.http import respond, workspace_id
from tunelab.store import ObjectStore, key_from_uri


def _ready_file(request: Request, split: str) -> str:
    with request.app.state.db.session() as session:
        dataset = find(session, workspace_id(request), request.path_params["name"])
    if dataset.status != "ready" or not dataset.files:
        raise Conflict(f"Dataset {dataset.name!r} is {dataset.status}, not ready.")
    if split not in dataset.files:
        raise NotFound(
            f"Dataset {dataset.name!r} has no {split!r} split; it has {sorted(dataset.files)}."
        )
    return key_from_uri(dataset.files[split])


def _local_copy(store: ObjectStore, key: str) -> IO[bytes]:
    """Parquet readers need to seek; an S3 body cannot."""
    spool = tempfile.SpooledTemporaryFile(max_size=16 << 20)  # noqa: SIM115 - the caller closes it
    with store.open(key) as body:
        shutil.copyfileobj(body, spool)
    spool.seek(0)
    return spool


def _int_param(request: Request, name: str, default: int, high: int) -> int:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError:
        value = -1
    if not 1 <= value <= high:
        raise Invalid(
            f"{name} must be an integer from 1 to {high}.",
            [{"field": name, "message": "out of range"}],
        )
    return value


def preview_dataset(request: Request) -> JSONResponse:
    limit = _int_param(request, "limit", 20, 1000)
    key = _ready_file(request, request.query_params.get("split", "train"))
    with _local_copy(request.app.state.store, key) as data:
        rows: list[dict[str, Any]] = []
        for batch in pq.ParquetFile(data).iter_batches(batch_size=limit):
            rows += batch.to_pylist()[: limit - len(rows)]
            if len(rows) >= limit:
                break
    return respond({"rows": rows})


def export_dataset(request: Request) -> StreamingResponse:
    """The split as it is stored: CSV rows as CSV (formula cells neutralised),
    conversations as OpenAI chat JSON Lines, preference pairs in OpenAI's preference
    JSON Lines."""
    split = request.query_params.get("split", "train")
    key = _ready_file(request, split)
    data = _local_copy(request.app.state.store, key)
    parquet = pq.ParquetFile(data)
    chats = "messages" in parquet.schema_arrow.names
    lines = _jsonl_lines(parquet) if chats else _csv_lines(parquet)

    def closing() -> Iterator[bytes]:
        with data:
            yield from lines

    name = request.path_params["name"]
    extension, media = ("jsonl", "application/jsonl") if chats else ("csv", "text/csv")
    return StreamingResponse(
        closing(),
        media_type=f"{media}; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}-{split}.{extension}"'},
    )


def _csv_lines(parquet: pq.ParquetFile) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = parquet.schema_arrow.names  # question,answer or prompt,chosen,rejected
    writer.writerow(columns)
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            writer.writerow([neutralise(row[c]) for c in columns])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode()


def _jsonl_lines(parquet: pq.ParquetFile) -> Iterator[bytes]:
    for batch in parquet.iter_batches(batch_size=4096):
        chunk = []
        for row in batch.to_pylist():
            messages = [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]
            record: dict[str, Any] = {"messages": messages}
            if "chosen" in row:  # a preference pair, in OpenAI's preference format
                record = {
                    "input": record,
                    "preferred_output": [{"role": "assistant", "content": row["chosen"]}],
                    "non_preferred_output": [{"role": "assistant", "content": row["rejected"]}],
                }
            chunk.append(json.dumps(record, ensure_ascii=False) + "\n")
        yield "".join(chunk).encode()
