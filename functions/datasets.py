"""Dataset triggers: every way a dataset comes in ends in `dataset.uploaded`."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.dataset_requests import (
    ChatsSourceSpec,
    DatasetMetadata,
    PluginSourceSpec,
    RemoteDataset,
    UploadRequest,
)
from tunelab.dataset_rules import MAX_DATASET_BYTES, dataset_kind, upload_prefix
from tunelab.db.tables import Dataset, new_id
from tunelab.errors import Conflict, Invalid, NotFound
from tunelab.events.dataset import (
    ChatsSource,
    DatasetUploaded,
    DatasetUploadedData,
    PluginSource,
)
from tunelab.events.envelope import derived_id
from tunelab.functions import uploads
from tunelab.functions.boundary import parse_json
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.lifecycle.experiments import active_users
from tunelab.lifecycle.fine_tuning import jobs_waiting_for
from tunelab.store import ObjectStore, PresignUnsupported, key_from_uri, keys
from tunelab.times import iso
from tunelab.views import DatasetView

SPLIT_PARTS = {"file": "train", "validate": "validate", "test": "test"}


def to_json(dataset: Dataset) -> dict[str, Any]:
    return DatasetView.shown(
        {
            **dataset.metadata_,
            "name": dataset.name,
            "status": dataset.status,
            "error": dataset.error,
            "warnings": dataset.warnings or [],
            "kind": dataset_kind(dataset.stats),
            "stats": (dataset.stats or {}).get("train") if dataset.stats else None,
            "splits": {
                split: {"rows": s.get("rows")} for split, s in (dataset.stats or {}).items()
            },
            "source": dataset.source,
            "created_at": iso(dataset.created_at),
        }
    )


def find(session: Session, workspace: str, name: str) -> Dataset:
    dataset = session.scalar(
        select(Dataset).where(Dataset.workspace_id == workspace, Dataset.name == name)
    )
    if dataset is None:
        raise NotFound(f"No dataset named {name!r} in this workspace.")
    return dataset


def _ensure_free(state: Any, workspace: str, name: str) -> None:
    with state.db.session() as session:
        if session.scalar(
            select(Dataset.id).where(Dataset.workspace_id == workspace, Dataset.name == name)
        ):
            raise Conflict(f"A dataset named {name!r} already exists.")


def register(
    state: Any,
    workspace: str,
    dataset_id: str,
    metadata: DatasetMetadata,
    source: dict[str, Any],
    sources: dict[str, str] | None,
    plugin: PluginSource | None = None,
) -> dict[str, Any]:
    """Store the dataset row and, when its files are known, its `dataset.uploaded`
    event in the same transaction, then send the event.

    With `sources` None the dataset waits (status awaiting_upload) for its file.
    Raises Conflict when the name is taken; if sending fails, the row and the event
    are removed again.
    """
    dataset = Dataset(
        id=dataset_id,
        workspace_id=workspace,
        name=metadata.name,
        metadata_=metadata.model_dump(
            mode="json", include=set(DatasetMetadata.model_fields) - {"name"}
        ),
        source=source,
        status="pending" if sources is not None else "awaiting_upload",
    )
    event = uploaded_event(dataset, sources, plugin) if sources is not None else None
    try:
        with state.db.session() as session:
            session.add(dataset)
            session.flush()
            send = state.bus.stage(session, event) if event is not None else None
    except IntegrityError:
        raise Conflict(f"A dataset named {metadata.name!r} already exists.") from None
    if send is not None and event is not None:
        try:
            send()
        except BaseException:
            with state.db.session() as session:
                session.query(Dataset).filter_by(id=dataset_id).delete()
                state.bus.retract(session, event)
            raise
    return to_json(dataset)


def uploaded_event(
    dataset: Dataset, sources: dict[str, str], plugin: PluginSource | None = None
) -> DatasetUploaded:
    """The dataset's `dataset.uploaded`; its id derives from the dataset's, so announcing
    the same dataset again is the same event."""
    meta = dataset.metadata_
    names = (dataset.source or {}).get("files") or sources
    chats = None
    if (dataset.source or {}).get("type") == "chats":
        given = dataset.source
        chats = ChatsSource(
            kind=given["kind"], service=given.get("service"), since=given.get("from"),
            until=given.get("until"),
        )  # fmt: skip
    return DatasetUploaded(
        id=derived_id(f"{dataset.id}/dataset.uploaded"),
        workspace=dataset.workspace_id,
        subject=f"datasets/{dataset.name}",
        data=DatasetUploadedData(
            dataset_id=dataset.id,
            name=dataset.name,
            sources=sources,
            plugin=plugin,
            chats=chats,
            formats=split_formats(meta.get("format", "auto"), names),
            feature_mapping=meta["feature_mapping"],
            language=meta["language"],
            size_category=meta.get("size_category"),
        ),
    )


EXTENSION_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".ndjson": "json"}


def split_formats(declared: str, names: dict[str, str]) -> dict[str, str]:
    """Each split's format: the declared one, else what its file name's extension says
    (JSON files' record keys then tell which conversation format)."""
    if declared != "auto":
        return dict.fromkeys(names, declared)
    formats = {}
    for split, name in names.items():
        suffix = PurePosixPath(name.split("?", 1)[0]).suffix.lower()
        if suffix in EXTENSION_FORMATS:
            formats[split] = EXTENSION_FORMATS[suffix]
    return formats


async def create_dataset(request: Request) -> JSONResponse:
    if request.headers.get("content-type", "").startswith("application/json"):
        spec = parse(RemoteDataset, await read_json(request), "dataset")
        return respond(await run_in_threadpool(_create_remote, request, spec), 202)
    state, dataset_id = request.app.state, new_id()
    file_keys = {
        part: keys.dataset_staging(dataset_id, split) for part, split in SPLIT_PARTS.items()
    }
    received = await uploads.receive(request, state.store, file_keys, MAX_DATASET_BYTES)
    try:
        return respond(
            await run_in_threadpool(_create_uploaded, request, dataset_id, received), 202
        )
    except BaseException:
        for stored in received.files.values():
            await run_in_threadpool(state.store.delete, stored.key)
        raise


def _create_uploaded(
    request: Request, dataset_id: str, received: uploads.Received
) -> dict[str, Any]:
    if "file" not in received.files:
        raise Invalid(
            "The upload has no 'file' part (the training file).",
            [{"field": "file", "message": "required"}],
        )
    if "metadata" not in received.fields:
        raise Invalid(
            "The upload has no 'metadata' part.",
            [{"field": "metadata", "message": "required (a JSON object)"}],
        )
    raw = parse_json(received.fields["metadata"], "'metadata' part")
    metadata = parse(DatasetMetadata, raw, "dataset metadata")
    state, workspace = request.app.state, workspace_id(request)
    _ensure_free(state, workspace, metadata.name)
    sources = {
        SPLIT_PARTS[part]: state.store.uri(stored.key) for part, stored in received.files.items()
    }
    source = {"type": "upload", "files": {SPLIT_PARTS[p]: n for p, n in received.filenames.items()}}
    return register(state, workspace, dataset_id, metadata, source, sources)


def _create_remote(request: Request, spec: RemoteDataset) -> dict[str, Any]:
    state, workspace = request.app.state, workspace_id(request)
    _ensure_free(state, workspace, spec.name)
    source = spec.source.model_dump(mode="json", exclude_none=True, by_alias=True)
    if isinstance(spec.source, ChatsSourceSpec):
        return register(state, workspace, new_id(), spec, source, {})
    if isinstance(spec.source, PluginSourceSpec):
        plugin = PluginSource(name=spec.source.plugin, parameters=spec.source.parameters)
        return register(state, workspace, new_id(), spec, source, {}, plugin)
    sources = {"train": spec.source.uri}
    for split in ("validate", "test"):
        uri = getattr(spec.source, f"{split}_uri")
        if uri:
            sources[split] = uri
    prefix = upload_prefix(request.scope["workspace"].name)
    for split, uri in sources.items():
        sources[split] = _own_object(
            state.store,
            spec.source.type,
            uri,
            prefix,
            "source.uri" if split == "train" else f"source.{split}_uri",
        )
    return register(state, workspace, new_id(), spec, source, sources)


def _own_object(store: ObjectStore, kind: str, uri: str, prefix: str, field: str) -> str:
    """The URI to ingest; the platform's own bucket only under the caller's prefix.

    Raises Invalid otherwise: the platform's credentials must not read another
    workspace's uploads or any dataset's internal objects.
    """
    own_bucket = getattr(store, "bucket", None)
    if kind == "upload" and not uri.startswith("s3://"):
        key = uri
    elif own_bucket is not None and uri.startswith(f"s3://{own_bucket}/"):
        key = key_from_uri(uri)
    elif kind == "upload":
        raise Invalid(
            "An upload source must be in the platform's bucket.",
            [{"field": field, "message": f"not under s3://{own_bucket}/{prefix}"}],
        )
    else:
        return uri
    if not key.startswith(prefix) or ".." in key.split("/"):
        raise Invalid(
            f"Only objects under {prefix} can be used from the platform's bucket.",
            [{"field": field, "message": f"must start with {prefix}"}],
        )
    if not store.exists(key):
        raise Invalid(
            f"There is no uploaded object {key!r}.", [{"field": field, "message": "not found"}]
        )
    return store.uri(key)


async def create_upload(request: Request) -> JSONResponse:
    """A dataset whose file the client PUTs to a presigned URL; the bucket's
    notification (`POST /triggers/s3`) then starts ingestion."""
    spec = parse(UploadRequest, await read_json(request), "upload")
    return respond(await run_in_threadpool(_create_upload, request, spec), 201)


def _create_upload(request: Request, spec: UploadRequest) -> dict[str, Any]:
    state, workspace = request.app.state, workspace_id(request)
    _ensure_free(state, workspace, spec.name)
    dataset_id = new_id()
    key = f"{upload_prefix(request.scope['workspace'].name)}{dataset_id}/{spec.filename}"
    try:
        url = state.store.presigned_url(key, "PUT", expires_s=3600)
    except PresignUnsupported as exc:
        raise Invalid(str(exc), [{"field": "store", "message": "presigned URLs need S3"}]) from None
    body = register(state, workspace, dataset_id, spec, {"type": "s3-upload", "key": key}, None)
    return {**body, "upload": {"method": "PUT", "url": url, "key": key, "expires_in": 3600}}


def list_datasets(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(Dataset)
            .where(Dataset.workspace_id == workspace_id(request))
            .order_by(Dataset.created_at.desc())
        )
        return respond({"items": [to_json(d) for d in rows]})


def get_dataset(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        return respond(to_json(find(session, workspace_id(request), request.path_params["name"])))


def delete_dataset(request: Request) -> JSONResponse:
    state, workspace = request.app.state, workspace_id(request)
    name = request.path_params["name"]
    remove(state, workspace, name)
    return respond({"name": name, "deleted": True})


def remove(state: Any, workspace: str, name: str) -> None:
    """Delete the dataset and its objects; Conflict while a running experiment uses it."""
    with state.db.session() as session:
        dataset = find(session, workspace, name)
        users = active_users(session, workspace, dataset=name)
        if users:
            raise Conflict(
                f"Dataset {name!r} is used by running experiments {users}; "
                "cancel them or wait until they finish."
            )
        waiting = jobs_waiting_for(session, workspace, name)
        if waiting:  # they would wait for ever: no check of it would end
            raise Conflict(
                f"Fine-tuning jobs {waiting} wait for dataset {name!r}; cancel them first."
            )
        # Objects first: if the store fails, the row stays and the DELETE can be retried.
        for prefix in keys.dataset_prefixes(dataset.id):
            state.store.delete_prefix(prefix)
        source_key = (dataset.source or {}).get("key")
        if source_key:
            state.store.delete(source_key)
        session.delete(dataset)
