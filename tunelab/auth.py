"""Workspaces and API tokens. Tokens are random, so a SHA-256 of each is what is stored."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

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


class TokenCache:
    """Tokens verified in the last `ttl_s` seconds, so a request costs no database round
    trip for its token; a revoked token is refused once its entry expires."""

    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db, self.ttl_s = db, ttl_s
        self._entries: dict[str, tuple[Workspace, float]] = {}
        self._lock = threading.Lock()

    def resolve(self, token: str) -> Workspace | None:
        key, now = hash_token(token), time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[1] > now:
            return entry[0]
        workspace = resolve_token(self.db, token)
        with self._lock:
            if workspace is None:
                self._entries.pop(key, None)
            else:
                if len(self._entries) > 10_000:  # many tokens: forget the lot, not grow
                    self._entries.clear()
                self._entries[key] = (workspace, now + self.ttl_s)
        return workspace

    def cached(self, token: str) -> Workspace | None:
        """The workspace of a token verified recently, without asking the database."""
        with self._lock:
            entry = self._entries.get(hash_token(token))
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None
