"""The model repository: built-in and registered base models, and fine-tuned ones."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.dataset_rules import upload_prefix
from tunelab.db import Database
from tunelab.db.models import Model
from tunelab.errors import Conflict, Invalid, NotFound
from tunelab.events.model import ModelRegistered, ModelRegisteredData
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.names import Name
from tunelab.times import iso

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


def visible_model(session: Session, workspace: str, name: str) -> Model | None:
    """The workspace's own model of that name, else a built-in one."""
    rows = session.scalars(
        select(Model).where(
            Model.name == name, or_(Model.workspace_id == workspace, Model.workspace_id.is_(None))
        )
    ).all()
    return next((m for m in rows if m.workspace_id is not None), rows[0] if rows else None)


def to_json(model: Model) -> dict[str, Any]:
    spec = model.spec or {}
    return {
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
        "created_at": iso(model.created_at),
    }


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


async def register_model(request: Request) -> JSONResponse:
    spec = parse(RegisterRequest, await read_json(request), "model")
    return respond(await run_in_threadpool(_register, request, spec), 201)


def _register(request: Request, spec: RegisterRequest) -> dict[str, Any]:
    state, workspace = request.app.state, workspace_id(request)
    own_bucket = getattr(state.store, "bucket", None)
    prefix = f"s3://{own_bucket}/{upload_prefix(request.scope['workspace'].name)}"
    if (
        own_bucket is not None
        and spec.uri.startswith(f"s3://{own_bucket}/")
        and (not spec.uri.startswith(prefix) or ".." in spec.uri.split("/"))
    ):
        # The workers read with the platform's credentials: without this, a workspace
        # could train on another workspace's models or datasets by naming their keys.
        raise Invalid(
            f"A model in the platform's bucket must be under {prefix}.",
            [{"field": "uri", "message": f"must start with {prefix}"}],
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
