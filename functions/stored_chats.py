"""Stored chats, as OpenAI's API lists and reads them: `GET /v1/chat/completions`,
`GET/POST/DELETE /v1/chat/completions/{id}`, `GET /v1/chat/completions/{id}/messages`;
and votes for the best answer of a stored comparison (`POST /api/v1/chat/feedback`).

Only chats whose request set `store: true` (or whose service stores every chat) are
here; they are written shortly after they are answered, and deleted on request or when
the operator's retention has passed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.api_requests import Feedback
from tunelab.db.tables import ChatVote, Service, StoredChat
from tunelab.errors import Invalid, NotFound
from tunelab.functions.http import parse, read_json, respond, workspace_id


def _visible(workspace: str) -> Select[StoredChat]:
    return select(StoredChat).where(
        StoredChat.workspace_id == workspace, StoredChat.expires_at >= datetime.now(UTC)
    )


def _find(session: Session, workspace: str, chat_id: str) -> StoredChat:
    chat = session.scalar(_visible(workspace).where(StoredChat.id == chat_id))
    if chat is None:
        raise NotFound(f"No stored chat completion {chat_id!r}.")
    return chat


def _to_json(chat: StoredChat) -> dict[str, Any]:
    return {**chat.completion, "metadata": chat.metadata_}


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise Invalid("limit must be 1 to 100.", [{"field": "limit", "message": "1 to 100"}])
    return int(raw)


def _page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def list_chats(request: Request) -> JSONResponse:
    """Newest first (or `order=asc`), by `model` and `metadata[key]=value`, after an id."""
    params, limit = request.query_params, _limit(request)
    ascending = params.get("order", "desc") == "asc"
    order = StoredChat.created_at.asc() if ascending else StoredChat.created_at.desc()
    with request.app.state.db.session() as session:
        query = _visible(workspace_id(request)).order_by(order, StoredChat.id)
        if params.get("model"):
            query = query.where(StoredChat.service == params["model"])
        if params.get("after"):
            after = _find(session, workspace_id(request), params["after"])
            newer = StoredChat.created_at > after.created_at
            older = StoredChat.created_at < after.created_at
            query = query.where(newer if ascending else older)
        wanted = {
            key[len("metadata[") : -1]: value
            for key, value in params.multi_items()
            if key.startswith("metadata[") and key.endswith("]")
        }
        items = []
        for chat in session.scalars(query.limit(500)):
            if all(chat.metadata_.get(k) == v for k, v in wanted.items()):
                items.append(_to_json(chat))
                if len(items) > limit:
                    break
    return respond(_page(items, limit))


def get_chat(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        return respond(_to_json(_find(session, workspace_id(request), request.path_params["id"])))


def chat_messages(request: Request) -> JSONResponse:
    limit = _limit(request)
    with request.app.state.db.session() as session:
        chat = _find(session, workspace_id(request), request.path_params["id"])
        items = [
            {"id": f"{chat.id}-{i}", "role": m["role"], "content": m["content"]}
            for i, m in enumerate(chat.messages)
        ]
    after = request.query_params.get("after")
    if after:
        ids = [m["id"] for m in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return respond(_page(items, limit))


class MetadataUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, str] = Field(max_length=16)


async def update_chat(request: Request) -> JSONResponse:
    update = parse(MetadataUpdate, await read_json(request), "update")
    return respond(await run_in_threadpool(_set_metadata, request, update.metadata))


def _set_metadata(request: Request, metadata: dict[str, str]) -> dict[str, Any]:
    with request.app.state.db.session() as session:
        chat = _find(session, workspace_id(request), request.path_params["id"])
        # The metadata is replaced, as OpenAI's update does, but an answer of a
        # comparison stays one: its vote joins it by this key (tunelab.serving.stored_chats).
        kept = {k: v for k, v in (chat.metadata_ or {}).items() if k == "comparison"}
        chat.metadata_ = {**metadata, **kept}
        return _to_json(chat)


def delete_chat(request: Request) -> JSONResponse:
    with request.app.state.db.session() as session:
        chat = _find(session, workspace_id(request), request.path_params["id"])
        session.delete(chat)
    return respond({"object": "chat.completion.deleted", "id": chat.id, "deleted": True})


async def chat_feedback(request: Request) -> JSONResponse:
    spec = parse(Feedback, await read_json(request), "feedback")
    return respond(await run_in_threadpool(_vote, request, spec), 201)


def _vote(request: Request, spec: Feedback) -> dict[str, Any]:
    """Record the vote (a second one replaces it). The comparison's chats may not be
    written yet (they are, within TUNELAB_TRAFFIC_FLUSH_S): they are joined to the vote
    when a dataset is built from chats, where a vote without stored chats gives
    nothing."""
    try:
        return _record_vote(request, spec)
    except IntegrityError:  # the same vote twice at once: the second replaces the first
        return _record_vote(request, spec)


def _record_vote(request: Request, spec: Feedback) -> dict[str, Any]:
    workspace = workspace_id(request)
    with request.app.state.db.session() as session:
        if (
            session.scalar(
                select(Service.id).where(
                    Service.workspace_id == workspace, Service.name == spec.best
                )
            )
            is None
        ):
            raise Invalid(
                f"No service named {spec.best!r}.",
                [{"field": "best", "message": f"no service {spec.best!r}"}],
            )
        vote = session.get(ChatVote, spec.comparison_id)
        if vote is not None and vote.workspace_id != workspace:
            raise NotFound(f"No comparison {spec.comparison_id!r}.")
        if vote is None:
            session.add(ChatVote(id=spec.comparison_id, workspace_id=workspace, best=spec.best))
        else:
            vote.best, vote.created_at = spec.best, datetime.now(UTC)
    return {"comparison_id": spec.comparison_id, "best": spec.best}
