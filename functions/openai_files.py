"""OpenAI's Files API for fine-tuning (`/v1/files`): a file is a tunelab dataset named
after the file's id, checked by the same ingestion as any upload; its status says how
the checks went (`uploaded` while they run, `processed`, or `error` with the first
problem and its line)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from tunelab.dataset_requests import DatasetMetadata
from tunelab.dataset_rules import MAX_DATASET_BYTES
from tunelab.db.tables import Dataset, new_id
from tunelab.errors import Invalid, NotFound
from tunelab.fine_tuning import FILE_ID, FILE_PREFIX, new_file_id
from tunelab.functions import datasets, uploads
from tunelab.functions.http import cursor_page, respond, workspace_id
from tunelab.store import ObjectNotFound, keys
from tunelab.times import epoch

PURPOSE = "fine-tune"
STATUS = {"pending": "uploaded", "ready": "processed", "failed": "error"}


def file_json(dataset: Dataset) -> dict[str, Any]:
    source = dataset.source or {}
    error = dataset.error or {}
    return {
        "id": dataset.name,
        "object": "file",
        "bytes": source.get("bytes", 0),
        "created_at": epoch(dataset.created_at),
        "filename": (source.get("files") or {}).get("train", dataset.name),
        "purpose": source.get("purpose", PURPOSE),
        "status": STATUS.get(dataset.status, "uploaded"),
        "status_details": error.get("message") if dataset.status == "failed" else None,
        "expires_at": None,
    }


def is_file(dataset: Dataset) -> bool:
    return (dataset.source or {}).get("purpose") == PURPOSE


def find_file(state: Any, workspace: str, file_id: str) -> Dataset:
    with state.db.session() as session:
        dataset: Dataset | None = session.scalar(
            select(Dataset).where(Dataset.workspace_id == workspace, Dataset.name == file_id)
        )
    if dataset is None or not is_file(dataset):
        raise NotFound(f"No such file: {file_id}.", [{"field": "file_id", "message": "not found"}])
    return dataset


async def create_file(request: Request) -> JSONResponse:
    state, dataset_id = request.app.state, new_id()
    key = keys.dataset_staging(dataset_id, "train")
    received = await uploads.receive(request, state.store, {"file": key}, MAX_DATASET_BYTES)
    try:
        return respond(await run_in_threadpool(_create, request, dataset_id, received))
    except BaseException:
        for stored in received.files.values():
            await run_in_threadpool(state.store.delete, stored.key)
        raise


def _create(request: Request, dataset_id: str, received: uploads.Received) -> dict[str, Any]:
    purpose = received.fields.get("purpose")
    if purpose != PURPOSE:
        raise Invalid(
            f"purpose must be {PURPOSE!r} (tunelab's files are for fine-tuning), not {purpose!r}.",
            [{"field": "purpose", "message": f"must be {PURPOSE!r}"}],
        )
    if "file" not in received.files:
        raise Invalid("The upload has no 'file' part.", [{"field": "file", "message": "required"}])
    stored, filename = received.files["file"], received.filenames["file"]
    state, workspace = request.app.state, workspace_id(request)
    file_id = new_file_id()
    # The format from the file name (.jsonl, .json, .csv) and then from its records:
    # OpenAI's chat format for supervised jobs, its preference format for DPO.
    source = {
        "type": "upload",
        "purpose": PURPOSE,
        "bytes": stored.size,
        "files": {"train": filename},
    }
    datasets.register(
        state,
        workspace,
        dataset_id,
        DatasetMetadata(name=file_id),
        source,
        {"train": state.store.uri(stored.key)},
    )
    return file_json(find_file(state, workspace, file_id))


def list_files(request: Request) -> JSONResponse:
    params = request.query_params
    purpose = params.get("purpose")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise Invalid("order must be asc or desc.", [{"field": "order", "message": "asc|desc"}])
    with request.app.state.db.session() as session:
        created = Dataset.created_at.desc() if order == "desc" else Dataset.created_at
        rows = session.scalars(
            select(Dataset)
            .where(
                Dataset.workspace_id == workspace_id(request),
                Dataset.name.startswith(FILE_PREFIX),
            )
            .order_by(created, Dataset.name)
        ).all()
        files = [
            file_json(d)
            for d in rows
            if is_file(d) and FILE_ID.fullmatch(d.name) and purpose in (None, PURPOSE)
        ]
    return respond(cursor_page(files, params, default_limit=10000, max_limit=10000))


def get_file(request: Request) -> JSONResponse:
    state = request.app.state
    file_id = request.path_params["id"]
    return respond(file_json(find_file(state, workspace_id(request), file_id)))


def delete_file(request: Request) -> JSONResponse:
    state, workspace = request.app.state, workspace_id(request)
    dataset = find_file(state, workspace, request.path_params["id"])
    datasets.remove(state, workspace, dataset.name)
    return respond({"id": dataset.name, "object": "file", "deleted": True})


def file_content(request: Request) -> StreamingResponse:
    """The bytes as they were uploaded."""
    state = request.app.state
    dataset = find_file(state, workspace_id(request), request.path_params["id"])
    try:
        stream = state.store.open(keys.dataset_staging(dataset.id, "train"))
    except ObjectNotFound:
        raise NotFound(f"File {dataset.name} has no content any more.") from None

    def chunks() -> Any:
        with stream:
            while chunk := stream.read(1 << 20):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream")
