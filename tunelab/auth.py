"""Workspaces and API tokens. Tokens are random, so a SHA-256 of each is what is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.db import Database
from tunelab.db.models import ApiToken, Workspace
from tunelab.names import check_label

TOKEN_PREFIX = "tl_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_workspace(session: Session, name: str) -> Workspace:
    check_label(name)
    workspace = session.scalar(select(Workspace).where(Workspace.name == name))
    if workspace is None:
        workspace = Workspace(name=name)
        session.add(workspace)
        session.flush()
    return workspace


def create_token(db: Database, workspace_name: str) -> str:
    """A new token for the workspace (created if it does not exist); shown once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as session:
        workspace = ensure_workspace(session, workspace_name)
        session.add(
            ApiToken(workspace_id=workspace.id, token_hash=hash_token(token), prefix=token[:10])
        )
    return token


def resolve_token(db: Database, token: str) -> Workspace | None:
    with db.session() as session:
        return session.scalar(
            select(Workspace)
            .join(ApiToken, ApiToken.workspace_id == Workspace.id)
            .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
        )
