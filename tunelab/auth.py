"""Workspaces, API tokens and their roles. Tokens are random, so a SHA-256 of each is
what is stored; the secret itself is shown once, when it is made.

A token's role says what it may do in its workspace: a viewer reads, a member manages
the workspace's own resources, an admin also manages its tokens, webhooks and base
models. Routes declare the role they need (functions.permissions).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tunelab.api_requests import Role
from tunelab.db import Database
from tunelab.db.tables import ApiToken, Workspace
from tunelab.names import check_label

TOKEN_PREFIX = "tl_"
ROLES: tuple[Role, ...] = ("viewer", "member", "admin")
"""From least to most: each role may do what the ones before it may."""


class TokenNameTaken(ValueError):
    """The workspace already has a token of that name."""


@dataclass(frozen=True)
class Caller:
    """Who a request is from: the workspace and the token it was sent with."""

    workspace: Workspace
    token_id: str
    token_name: str
    role: Role
    expires_at: datetime | None

    def may(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and _aware(self.expires_at) <= now


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite: naive UTC


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


def create_token(
    db: Database,
    workspace_name: str,
    *,
    name: str | None = None,
    role: Role = "admin",
    expires_in: timedelta | None = None,
) -> str:
    """A new token for the workspace (created if it does not exist); shown once. Without
    a name it is called after its prefix. Raises TokenNameTaken."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    name = check_label(name) if name else f"token-{token[3:11].lower().replace('_', '-')}"
    expires = datetime.now(UTC) + expires_in if expires_in else None
    try:
        with db.session() as session:
            workspace = ensure_workspace(session, workspace_name)
            session.add(
                ApiToken(
                    workspace_id=workspace.id,
                    name=name,
                    role=role,
                    token_hash=hash_token(token),
                    prefix=token[:10],
                    expires_at=expires,
                )
            )
    except IntegrityError:
        raise TokenNameTaken(f"workspace {workspace_name!r} has a token named {name!r}") from None
    return token


def list_tokens(session: Session, workspace_id: str) -> list[ApiToken]:
    return list(
        session.scalars(
            select(ApiToken)
            .where(ApiToken.workspace_id == workspace_id)
            .order_by(ApiToken.created_at.desc())
        )
    )


def revoke_token(session: Session, workspace_id: str, name: str) -> ApiToken | None:
    """The token, revoked from now (None: no such token)."""
    token = session.scalar(
        select(ApiToken).where(ApiToken.workspace_id == workspace_id, ApiToken.name == name)
    )
    if token is not None and token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
    return token


def resolve_token(db: Database, token: str) -> Caller | None:
    """Who holds `token`: None when it is unknown, revoked or expired."""
    with db.session() as session:
        row = session.execute(
            select(Workspace, ApiToken)
            .join(ApiToken, ApiToken.workspace_id == Workspace.id)
            .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
        ).first()
    if row is None:
        return None
    workspace, found = row
    caller = Caller(workspace, found.id, found.name, found.role, found.expires_at)  # type: ignore[arg-type]
    return None if caller.expired(datetime.now(UTC)) else caller


class TokenCache:
    """Tokens verified in the last `ttl_s` seconds, so a request costs no database round
    trip for its token; a revoked token is refused once its entry expires, an expired
    one at once."""

    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db, self.ttl_s = db, ttl_s
        self._entries: dict[str, tuple[Caller, float]] = {}
        self._lock = threading.Lock()

    def resolve(self, token: str) -> Caller | None:
        key, now = hash_token(token), time.monotonic()
        caller = self.cached(token)
        if caller is not None:
            return caller
        caller = resolve_token(self.db, token)
        with self._lock:
            if caller is None:
                self._entries.pop(key, None)
            else:
                if len(self._entries) > 10_000:  # many tokens: forget the lot, not grow
                    self._entries.clear()
                self._entries[key] = (caller, now + self.ttl_s)
        return caller

    def cached(self, token: str) -> Caller | None:
        """The caller of a token verified recently, without asking the database."""
        with self._lock:
            entry = self._entries.get(hash_token(token))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return None if entry[0].expired(datetime.now(UTC)) else entry[0]
