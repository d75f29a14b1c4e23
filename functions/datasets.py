"""Dataset triggers: accept an upload, stage it, announce `dataset.uploaded`."""

from __future__ import annotations

import csv
import io
import json
from itertools import islice
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.models import Dataset, new_id
from tunelab.errors import BadRequest, Conflict, Invalid, NotFound, TooLarge
from tunelab.events.dataset import DatasetUploaded, DatasetUploadedData
from tunelab.functions.http import iso, parse, respond, workspace_id
from tunelab.names import Name
from tunelab.store import key_from_uri, keys

MAX_UPLOAD_BYTES = 50 * 1024 * 1024


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = "question-answering"
    subtypes: list[str] = Field(default_factory=list)


class FeatureMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(default="question", min_length=1)
    answer: str = Field(default="answer", min_length=1)


class DatasetMetadata(BaseModel):
    """The user's description of a dataset (SPEC.md §2)."""

    model_config = ConfigDict(extra="forbid")
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    language: Literal["zh", "en"] = "en"
    cluster: Name = "local"
    namespace: Name = "default"
    license: str | None = None
    size_category: str | None = None
    task: TaskSpec = Field(default_factory=TaskSpec)
    feature_mapping: FeatureMapping = Field(default_factory=FeatureMapping)


def to_json(dataset: Dataset) -> dict[str, Any]:
    return {
        **dataset.metadata_,
        "name": dataset.name,
        "status": dataset.status,
        "error": dataset.error,
        "stats": dataset.stats,
        "source": dataset.source,
        "created_at": iso(dataset.created_at),
    }


def find(session: Session, workspace: str, name: str) -> Dataset:
    dataset = session.scalar(
        select(Dataset).where(Dataset.workspace_id == workspace, Dataset.name == name)
    )
    if dataset is None:
        raise NotFound(f"No dataset named {name!r} in this workspace.")
    return dataset


async def create_dataset(request: Request) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest("Upload a dataset as multipart/form-data with 'file' and 'metadata'.")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + (1 << 20):
        raise TooLarge(f"A dataset file may be at most {MAX_UPLOAD_BYTES >> 20} MB.")
    async with request.form(max_files=1, max_fields=4) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Invalid(
                "The upload has no 'file' part.", [{"field": "file", "message": "required"}]
            )
        raw_metadata = form.get("metadata")
        if not isinstance(raw_metadata, str):
            raise Invalid(
                "The upload has no 'metadata' part.",
                [{"field": "metadata", "message": "required (a JSON object)"}],
            )
        try:
            metadata_json = json.loads(raw_metadata)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"The 'metadata' part is not valid JSON: {exc}.") from None
        metadata = parse(DatasetMetadata, metadata_json, "dataset metadata")
        if (upload.size or 0) > MAX_UPLOAD_BYTES:
            raise TooLarge(f"A dataset file may be at most {MAX_UPLOAD_BYTES >> 20} MB.")
        body = await run_in_threadpool(_stage_and_announce, request, metadata, upload)
    return respond(body, 202)


def _stage_and_announce(
    request: Request, metadata: DatasetMetadata, upload: UploadFile
) -> dict[str, Any]:
    state = request.app.state
    workspace = workspace_id(request)
    dataset_id = new_id()
    staged = keys.dataset_staging(dataset_id)
    with state.db.session() as session:
        if session.scalar(
            select(Dataset.id).where(
                Dataset.workspace_id == workspace, Dataset.name == metadata.name
            )
        ):
            raise Conflict(f"A dataset named {metadata.name!r} already exists.")
    upload.file.seek(0)
    state.store.put_stream(staged, upload.file)
    source = {"type": "upload", "filename": upload.filename}
    try:
        with state.db.session() as session:
            dataset = Dataset(
                id=dataset_id,
                workspace_id=workspace,
                name=metadata.name,
                metadata_=metadata.model_dump(mode="json", exclude={"name"}),
                source=source,
            )
            session.add(dataset)
        state.bus.publish(
            DatasetUploaded(
                workspace=workspace,
                subject=f"datasets/{metadata.name}",
                data=DatasetUploadedData(
                    dataset_id=dataset_id,
                    name=metadata.name,
                    source_uri=state.store.uri(staged),
                    feature_mapping=metadata.feature_mapping.model_dump(),
                ),
            )
        )
    except IntegrityError:
        state.store.delete(staged)
        raise Conflict(f"A dataset named {metadata.name!r} already exists.") from None
    except BaseException:
        # Nothing half-stored: without its event the dataset would wait forever.
        with state.db.session() as session:
            session.query(Dataset).filter_by(id=dataset_id).delete()
        state.store.delete(staged)
        raise
    return to_json(dataset)


def list_datasets(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(Dataset)
            .where(Dataset.workspace_id == workspace_id(request))
            .order_by(Dataset.created_at.desc())
        ).all()
        return respond({"items": [to_json(d) for d in rows]})


def get_dataset(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        return respond(to_json(find(session, workspace_id(request), request.path_params["name"])))


def preview_dataset(request: Request) -> JSONResponse:
    try:
        limit = min(max(int(request.query_params.get("limit", "20")), 1), 1000)
    except ValueError:
        raise Invalid(
            "limit must be an integer.", [{"field": "limit", "message": "not an integer"}]
        ) from None
    with request.app.state.db.session() as session:
        dataset = find(session, workspace_id(request), request.path_params["name"])
    if dataset.status != "ready" or not dataset.files:
        raise Conflict(f"Dataset {dataset.name!r} is {dataset.status}, not ready.")
    with request.app.state.store.open(key_from_uri(dataset.files["train"])) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        rows = [{"question": r["question"], "answer": r["answer"]} for r in islice(reader, limit)]
    return respond({"rows": rows})


def delete_dataset(request: Request) -> JSONResponse:
    state = request.app.state
    with state.db.session() as session:
        dataset = find(session, workspace_id(request), request.path_params["name"])
        session.delete(dataset)
    state.store.delete_prefix(f"datasets/{dataset.id}/")
    state.store.delete_prefix(f"staging/datasets/{dataset.id}/")
    return respond({"name": dataset.name, "deleted": True})
