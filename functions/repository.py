"""The model repository: built-in and registered base models, and fine-tuned ones."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from tunelab.db import Database
from tunelab.db.tables import Experiment, Model, Service, Task
from tunelab.errors import Conflict, Forbidden, Invalid, NotFound
from tunelab.events.model import (
    ModelDeleted,
    ModelMergeRequested,
    ModelMergeRequestedData,
    ModelRef,
    ModelRegistered,
    ModelRegisteredData,
)
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.lifecycle.services import visible_model
from tunelab.lifecycle.specs import ServiceSpec, TaskSpec
from tunelab.lifecycle.states import SERVICE_LIVE, TASK_ACTIVE
from tunelab.model_sources import source_problem
from tunelab.names import Name
from tunelab.store import ObjectStore, keys
from tunelab.times import iso
from tunelab.views import ModelView

BUILTIN = Model(
    id="builtin-tiny-llama",
    workspace_id=None,
    name="tiny-llama",
    kind="base",
    uri="builtin://tiny-llama",
    spec={
        "description": "Test-size LLaMA-architecture model (4.5M parameters) built on first "
        "use from synthetic bilingual facts; it knows nothing else. For trying the "
        "platform and for tests, not for real answers.",
        "test_size": True,
        "architecture": "LlamaForCausalLM",
    },
)


def ensure_builtin_models(db: Database) -> None:
    """Every workspace sees the built-in base model; several processes may race here."""
    try:
        with db.session() as session:
            if session.get(Model, BUILTIN.id) is None:
                session.add(
                    Model(
                        **{
                            c: getattr(BUILTIN, c)
                            for c in ("id", "workspace_id", "name", "kind", "uri", "spec")
                        }
                    )
                )
    except IntegrityError:
        pass


def to_json(model: Model) -> dict[str, Any]:
    spec = model.spec or {}
    return ModelView.shown(
        {
            "name": model.name,
            "kind": model.kind,
            "builtin": model.workspace_id is None,
            "uri": model.uri,
            "description": spec.get("description"),
            "base_model": spec.get("base_model"),
            "experiment": spec.get("experiment"),
            "task": spec.get("task"),
            "score": spec.get("score"),
            "base_score": spec.get("base_score"),
            "adapter": spec.get("adapter"),
            "dataset": spec.get("dataset"),
            "parameters": spec.get("parameters"),
            "selection": spec.get("selection"),
            "lineage": spec.get("lineage", []),
            "merged_from": spec.get("merged_from"),
            "status": model.status,
            "error": model.error,
            "created_at": iso(model.created_at),
        }
    )


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    uri: str = Field(min_length=1)
    """A Hugging Face model directory: a local path on the workers, or an s3:// prefix."""
    description: str | None = None

    @field_validator("uri")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not (value.startswith(("s3://", "/", "file:///"))):
            raise ValueError("must be an absolute path on the workers or an s3:// prefix")
        return value


def list_models(request: Request) -> JSONResponse:
    workspace = workspace_id(request)
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(Model)
            .where(or_(Model.workspace_id == workspace, Model.workspace_id.is_(None)))
            .order_by(Model.created_at.desc())
        )
        kind = request.query_params.get("kind")
        return respond({"items": [to_json(m) for m in rows if kind in (None, m.kind)]})


def get_model(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        model = visible_model(session, workspace_id(request), request.path_params["name"])
        if model is None:
            raise NotFound(f"No model named {request.path_params['name']!r}.")
        return respond(to_json(model))


def _own_files(request: Request) -> tuple[Model, list[tuple[str, str, int]]]:
    """The model and its files in the platform's store, as (name, key, bytes).

    Only a fine-tuned model lives there; a base model's files are wherever the operator
    keeps them, and are not the platform's to hand out.
    """
    state, name = request.app.state, request.path_params["name"]
    with state.db.session() as session:
        model = visible_model(session, workspace_id(request), name)
    if model is None:
        raise NotFound(f"No model named {name!r}.")
    if model.kind != "finetuned":
        raise Conflict(
            f"Model {name!r} is a base model: only fine-tuned models can be listed and "
            "downloaded (a base model's files are where it was registered from)."
        )
    if model.status != "ready":
        raise Conflict(f"Model {name!r} is {model.status}: it has no files yet.")
    prefix = keys.model_prefix(model.id)
    store: ObjectStore = state.store
    return model, [(k[len(prefix) :], k, store.size(k)) for k in store.list(prefix)]


def model_files(request: Request) -> JSONResponse:
    model, files = _own_files(request)
    return respond(
        {
            "name": model.name,
            "files": [{"name": n, "bytes": size} for n, _, size in files],
            "bytes": sum(size for *_, size in files),
        }
    )


def download_model(request: Request) -> StreamingResponse:
    """The model's files as one tar, streamed as it is read: nothing is staged, so a
    model of many GB costs no disk on the API's machine."""
    model, files = _own_files(request)
    store: ObjectStore = request.app.state.store
    return StreamingResponse(
        tar_stream(store, model.name, files),
        media_type="application/x-tar",
        headers={
            "content-disposition": f'attachment; filename="{model.name}.tar"',
            "content-length": str(tar_size(files)),
        },
    )


def tar_stream(
    store: ObjectStore, folder: str, files: list[tuple[str, str, int]]
) -> Iterator[bytes]:
    for name, key, size in files:
        yield _tar_header(f"{folder}/{name}", size)
        with store.open(key) as body:
            while chunk := body.read(1 << 20):
                yield chunk
        yield b"\0" * (-size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker


def tar_size(files: list[tuple[str, str, int]]) -> int:
    ends = 2 * tarfile.BLOCKSIZE
    return ends + sum(len(_tar_header(n, s)) + s + (-s % tarfile.BLOCKSIZE) for n, _, s in files)


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info.tobuf(tarfile.PAX_FORMAT)


async def register_model(request: Request) -> JSONResponse:
    spec = parse(RegisterRequest, await read_json(request), "model")
    return respond(await run_in_threadpool(_register, request, spec), 201)


def _register(request: Request, spec: RegisterRequest) -> dict[str, Any]:
    state, workspace = request.app.state, workspace_id(request)
    # The workers read it with the platform's access: only where the operator allows.
    problem = source_problem(state.settings, spec.uri)
    if problem is not None:
        raise Invalid(
            f"The model's uri is refused: {problem}.", [{"field": "uri", "message": problem}]
        )
    model = Model(
        workspace_id=workspace,
        name=spec.name,
        kind="base",
        uri=spec.uri,
        spec={"description": spec.description},
    )
    try:
        with state.db.session() as session:
            if visible_model(session, workspace, spec.name) is not None:
                raise Conflict(f"A model named {spec.name!r} already exists.")
            session.add(model)
            session.flush()
            send = state.bus.stage(
                session,
                ModelRegistered(
                    workspace=workspace,
                    subject=f"models/{spec.name}",
                    data=ModelRegisteredData(model_id=model.id, name=spec.name, kind="base"),
                ),
            )
            body = to_json(model)
    except IntegrityError:
        raise Conflict(f"A model named {spec.name!r} already exists.") from None
    send()
    return body


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    """The merged model's name; default `<model>-merged`."""


async def merge_model(request: Request) -> JSONResponse:
    spec = parse(MergeRequest, await read_json(request), "merge")
    return respond(await run_in_threadpool(_merge, request, spec), 202)


def _merge(request: Request, spec: MergeRequest) -> dict[str, Any]:
    """A new full model, `merging` until a GPU worker has merged the LoRA model's
    adapter into its base; then `ready`, with the adapter's model as its lineage."""
    state, workspace = request.app.state, workspace_id(request)
    name = request.path_params["name"]
    if state.settings.backend != "local":
        raise Conflict("Merging runs on the local backend's GPU workers; not on Kubernetes yet.")
    with state.db.session() as session:
        source = visible_model(session, workspace, name)
        if source is None:
            raise NotFound(f"No model named {name!r}.")
        if source.kind != "finetuned" or not (source.spec or {}).get("adapter"):
            raise Conflict(f"Model {name!r} is not a LoRA model: there is no adapter to merge.")
        if source.status != "ready":
            raise Conflict(f"Model {name!r} is {source.status}.")
        merged_name = spec.name or f"{name}-merged"[:63]
        if visible_model(session, workspace, merged_name) is not None:
            raise Conflict(
                f"A model named {merged_name!r} already exists.",
                [{"field": "name", "message": f"{merged_name!r} is taken"}],
            )
        model = Model(
            workspace_id=workspace,
            name=merged_name,
            kind="finetuned",
            uri="",
            status="merging",
            spec={
                **(source.spec or {}),
                "adapter": False,
                "merged_from": {"name": name, "id": source.id},
            },
        )
        session.add(model)
        try:
            session.flush()
        except IntegrityError:  # the same name asked for at once
            raise Conflict(f"A model named {merged_name!r} already exists.") from None
        model.uri = state.store.uri(keys.model_prefix(model.id))
        send = state.bus.stage(
            session,
            ModelMergeRequested(
                workspace=workspace,
                subject=f"models/{merged_name}",
                data=ModelMergeRequestedData(
                    model_id=model.id, name=merged_name, source_id=source.id, source=name
                ),
            ),
        )
        body = to_json(model)
    send()
    return body


def delete_model(request: Request) -> JSONResponse:
    """A fine-tuned model (its files go with it) or a registered base model (an admin's
    call; its files are the operator's): 409 while a service or an unfinished task uses
    it. Built-in models stay."""
    state, workspace = request.app.state, workspace_id(request)
    name = request.path_params["name"]
    with state.db.session() as session:
        model = session.scalar(
            select(Model).where(Model.workspace_id == workspace, Model.name == name)
        )
        if model is None:
            if visible_model(session, workspace, name) is not None:
                raise Conflict(f"{name!r} is a built-in model: it cannot be deleted.")
            raise NotFound(f"No model named {name!r}.")
        if model.kind == "base" and not request.scope["caller"].may("admin"):
            raise Forbidden(f"Deleting base model {name!r} needs an admin token.")
        users = _users(session, workspace, model)
        if users:
            raise Conflict(
                f"Model {name!r} is in use by {', '.join(users)}; delete or finish them first.",
                [{"field": "name", "message": f"used by {u}"} for u in users],
            )
        prefix = keys.model_prefix(model.id) if model.kind == "finetuned" else None
        session.delete(model)
        send = state.bus.stage(
            session,
            ModelDeleted(
                workspace=workspace,
                subject=f"models/{name}",
                data=ModelRef(model_id=model.id, name=name, kind=model.kind),
            ),
        )
    if prefix is not None:
        state.store.delete_prefix(prefix)
    send()
    return respond({"name": name, "deleted": True})


def _users(session: Session, workspace: str, model: Model) -> list[str]:
    services = session.scalars(
        select(Service).where(Service.workspace_id == workspace, Service.status.in_(SERVICE_LIVE))
    )
    found = [f"service {s.name!r}" for s in services if ServiceSpec.of(s).model_id == model.id]
    tasks = session.execute(
        select(Task, Experiment.name)
        .join(Experiment, Experiment.id == Task.experiment_id)
        .where(Task.workspace_id == workspace, Task.status.in_(TASK_ACTIVE))
    )
    found += [
        f"task {task.name!r} of experiment {experiment!r}"
        for task, experiment in tasks
        if TaskSpec.of(task).base_model_uri == model.uri
    ]
    merging = session.scalars(
        select(Model).where(Model.workspace_id == workspace, Model.status == "merging")
    )
    found += [
        f"model {m.name!r} (being merged from it)"
        for m in merging
        if (m.spec or {}).get("merged_from", {}).get("id") == model.id
    ]
    return found
