"""Parameter groups: named, reusable hyperparameter presets (SPEC.md §3), for SFT or DPO."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.api_requests import GroupRequest
from tunelab.clusters import placement_problems
from tunelab.db.tables import ParameterGroup
from tunelab.errors import Conflict, Invalid, NotFound
from tunelab.functions.http import parse, read_json, respond, workspace_id
from tunelab.lifecycle.experiments import active_users
from tunelab.params import Parameters, errors_of, presets, resolve
from tunelab.times import iso
from tunelab.views import GroupView


def to_json(group: ParameterGroup) -> dict[str, Any]:
    return GroupView.shown(
        {
            "name": group.name,
            "cluster": group.cluster,
            "namespace": group.namespace,
            "finetune_type": group.finetune_type,
            "parameters": group.parameters,
            "created_at": iso(group.created_at),
        }
    )


def find(session: Session, workspace: str, name: str) -> ParameterGroup:
    group = session.scalar(
        select(ParameterGroup).where(
            ParameterGroup.workspace_id == workspace, ParameterGroup.name == name
        )
    )
    if group is None:
        raise NotFound(f"No parameter group named {name!r} in this workspace.")
    return group


async def create_group(request: Request) -> JSONResponse:
    spec = parse(GroupRequest, await read_json(request), "parameter group")
    return respond(await run_in_threadpool(_create, request, spec), 201)


def _create(request: Request, spec: GroupRequest) -> dict[str, Any]:
    given = spec.parameters.get("finetune_type")
    if spec.finetune_type and given and given != spec.finetune_type:
        message = f"parameters.finetune_type is {given!r}, finetune_type {spec.finetune_type!r}."
        raise Invalid(message, [{"field": "parameters.finetune_type", "message": message}])
    values = dict(spec.parameters)
    if spec.finetune_type:
        values["finetune_type"] = spec.finetune_type
    try:
        params = resolve(spec.preset, values)
    except ValidationError as exc:
        details = errors_of(exc, "parameters")
        raise Invalid(
            f"Invalid parameters: {', '.join(d['field'] for d in details)}.", details
        ) from None
    problems = placement_problems(request.app.state.settings, spec.cluster, spec.namespace)
    if problems:
        field = "namespace" if "namespace" in problems[0].split(";")[0] else "cluster"
        raise Invalid(problems[0], [{"field": field, "message": problems[0]}])
    group = ParameterGroup(
        workspace_id=workspace_id(request),
        name=spec.name,
        cluster=spec.cluster,
        namespace=spec.namespace,
        finetune_type=params.finetune_type,
        parameters=params.model_dump(mode="json"),
    )
    try:
        with request.app.state.db.session() as session:
            session.add(group)
    except IntegrityError:
        raise Conflict(f"A parameter group named {spec.name!r} already exists.") from None
    return to_json(group)


def list_groups(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        rows = session.scalars(
            select(ParameterGroup)
            .where(ParameterGroup.workspace_id == workspace_id(request))
            .order_by(ParameterGroup.created_at.desc())
        )
        return respond({"items": [to_json(g) for g in rows]})


def get_group(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        return respond(to_json(find(session, workspace_id(request), request.path_params["name"])))


def delete_group(request: Request) -> JSONResponse:
    workspace, name = workspace_id(request), request.path_params["name"]
    with request.app.state.db.session() as session:
        group = find(session, workspace, name)
        users = active_users(session, workspace, group=name)
        if users:
            raise Conflict(f"Parameter group {name!r} is used by running experiments {users}.")
        session.delete(group)
    return respond({"name": name, "deleted": True})


def list_presets(request: Request) -> JSONResponse:
    """The shipped presets with every value they resolve to."""
    return respond(
        {
            "items": [
                {
                    "name": name,
                    "description": preset["description"],
                    "parameters": resolve(name, {}).model_dump(mode="json"),
                }
                for name, preset in presets().items()
            ],
            "defaults": Parameters().model_dump(mode="json"),
            # Types, ranges and choices of every parameter, so a form can check values
            # as they are typed with the same bounds the server applies.
            "schema": Parameters.model_json_schema()["properties"],
        }
    )
