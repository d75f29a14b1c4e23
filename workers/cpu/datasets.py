"""The ingestion actor: `dataset.uploaded` in, `dataset.validated` or `.failed` out."""

from __future__ import annotations

import io
import itertools
import tempfile
from datetime import UTC, datetime
from typing import Any

from tunelab import plugins
from tunelab.context import Context
from tunelab.dataset_rules import MAX_DATASET_BYTES, QA_MAPPING
from tunelab.db.tables import Dataset
from tunelab.events.dataset import (
    DatasetFailed,
    DatasetFailedData,
    DatasetUploaded,
    DatasetUploadedData,
    DatasetValidated,
    DatasetValidatedData,
)
from tunelab.serving.stored_chats import chat_records
from tunelab.store import key_from_uri, keys
from tunelab.store.s3 import client_for
from tunelab.tokenizer import default_tokenizer
from tunelab.workers.context import current
from tunelab.workers.cpu.ingest import IngestResult, ingest, write_plugin_rows
from tunelab.workers.cpu.sources import SourceError, fetch_http, fetch_s3
from tunelab.workers.registry import subscriber


def fetch(ctx: Context, uri: str, sink: Any) -> int:
    """Copy a remote http(s) or s3 address into `sink`, capped and checked."""
    if uri.startswith("s3://"):
        return fetch_s3(client_for(ctx.settings, ctx.store), uri, sink, max_bytes=MAX_DATASET_BYTES)
    return fetch_http(
        uri,
        sink,
        max_bytes=MAX_DATASET_BYTES,
        timeout_s=ctx.settings.source_timeout_s,
        allow_private=ctx.settings.allow_private_sources,
    )


def _stage_chats(ctx: Context, data: DatasetUploadedData) -> tuple[dict[str, str], dict[str, str]]:
    """The workspace's stored chats (and votes) as a file, checked like any upload."""
    assert data.chats is not None
    source = data.chats
    with ctx.db.session() as session:
        dataset = session.get(Dataset, data.dataset_id)
        if dataset is None:
            raise SourceError("dataset_gone", "The dataset was deleted.")
        workspace = dataset.workspace_id
    records = chat_records(
        ctx.db,
        workspace,
        source.kind,
        source.service,
        datetime.fromisoformat(source.since) if source.since else None,
        datetime.fromisoformat(source.until) if source.until else None,
    )
    first = next(records, None)
    if first is None:
        what = "stored chats"
        if source.kind == "preference":
            what = "voted comparisons (POST /api/v1/chat/feedback) with stored chats"
        raise SourceError("no_chats", f"There are no {what} in that period to make a dataset of.")
    key = keys.dataset_staging(data.dataset_id)
    fmt = "preference" if source.kind == "preference" else "openai"
    write_plugin_rows(itertools.chain([first], records), ctx.store, key, fmt)
    return {"train": key}, {"train": fmt}


def stage(ctx: Context, data: DatasetUploadedData) -> tuple[dict[str, str], dict[str, str]]:
    """Each split's object key in the platform's store, fetching what is remote, and
    each split's format."""
    if data.chats is not None:
        return _stage_chats(ctx, data)
    if data.plugin is not None:
        plugin = plugins.load(data.plugin.name)

        def fetch_bytes(uri: str) -> bytes:
            buffer = io.BytesIO()
            fetch(ctx, uri, buffer)
            return buffer.getvalue()

        key = keys.dataset_staging(data.dataset_id)
        fmt = write_plugin_rows(
            plugin.rows(data.plugin.parameters, fetch_bytes),
            ctx.store,
            key,
            getattr(plugin, "format", "json"),
        )
        return {"train": key}, {"train": fmt}
    own = ctx.store.uri("")
    staged = {}
    for split, uri in data.sources.items():
        if uri.startswith(own):
            # Already in the platform's store (the API checked whose it is); a presigned
            # PUT has no size limit of its own, so the cap is applied here.
            key = key_from_uri(uri)
            if ctx.store.size(key) > MAX_DATASET_BYTES:
                raise SourceError(
                    "source_too_large",
                    f"The uploaded {split} file is larger than {MAX_DATASET_BYTES >> 20} MB.",
                )
            staged[split] = key
            continue
        key = keys.dataset_staging(data.dataset_id, split)
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            fetch(ctx, uri, spool)
            spool.seek(0)
            ctx.store.put_stream(key, spool)
        staged[split] = key
    return staged, data.formats


def run_ingestion(ctx: Context, data: DatasetUploadedData) -> IngestResult:
    try:
        staged, formats = stage(ctx, data)
    except (SourceError, plugins.PluginError) as exc:
        errors = [
            {"code": exc.code, "file": "train", "message": exc.message, **detail}
            for detail in exc.details or [{}]
        ]
        return IngestResult(errors=errors, error_total=1)
    # A plugin's rows are written as question/answer columns whatever the mapping says.
    mapping = QA_MAPPING if data.plugin is not None else data.feature_mapping
    return ingest(
        data.dataset_id,
        staged,
        mapping,
        ctx.store,
        formats=formats,
        language=data.language,
        size_category=data.size_category,
        tokenizer=default_tokenizer(ctx.settings),
        block_size=ctx.settings.default_block_size,
    )


def give_up(event: DatasetUploaded, error: str) -> None:
    """After the last retry: the dataset fails visibly instead of staying `validating`."""
    ctx = current()
    with ctx.db.session() as session:
        dataset = session.get(Dataset, event.data.dataset_id)
        if dataset is None or dataset.status in ("ready", "failed"):
            return
        dataset.status = "failed"
        dataset.error = {
            "code": "internal_error",
            "message": "Ingestion failed after "
            f"retries; the operator can see why in dead letters: {error}",
            "details": [],
            "total": 1,
        }
        send = ctx.bus.stage(session, _outcome(event, dataset))
    send()


@subscriber(
    "dataset.uploaded",
    "cpu",
    on_give_up=give_up,
    max_retries=5,
    min_backoff=5_000,  # a source that is briefly down gets about 2.5 minutes
    max_backoff=300_000,
    time_limit=15 * 60_000,
)
def ingest_dataset(event: DatasetUploaded) -> None:
    ctx = current()
    with ctx.db.session() as session:
        dataset = session.get(Dataset, event.data.dataset_id)
        if dataset is None:
            return  # deleted before we got to it
        if dataset.status in ("ready", "failed"):
            outcome = _outcome(event, dataset)  # a redelivery: announce the same outcome
        else:
            dataset.status = "validating"
            outcome = None
    if outcome is not None:
        ctx.bus.publish(outcome)
        return
    result = run_ingestion(ctx, event.data)
    if result.ok:
        fields = {"status": "ready", "stats": result.stats, "files": result.files}
    else:
        fields = {"status": "failed", "error": result.error_json(), "stats": result.stats}
    with ctx.db.session() as session:
        dataset = session.get(Dataset, event.data.dataset_id)
        if dataset is None:  # deleted while we worked: leave nothing behind
            for prefix in keys.dataset_prefixes(event.data.dataset_id):
                ctx.store.delete_prefix(prefix)
            return
        for name, value in {**fields, "warnings": result.warnings}.items():
            setattr(dataset, name, value)
        dataset.updated_at = datetime.now(UTC)
        send = ctx.bus.stage(session, _outcome(event, dataset))
    send()


def _outcome(event: DatasetUploaded, dataset: Dataset) -> DatasetValidated | DatasetFailed:
    ref = {"dataset_id": dataset.id, "name": dataset.name}
    if dataset.status == "ready":
        return DatasetValidated.following(
            event,
            data=DatasetValidatedData(**ref, stats=dataset.stats or {}, files=dataset.files or {}),
        )
    return DatasetFailed.following(event, data=DatasetFailedData(**ref, error=dataset.error or {}))
