"""The audit log: every state-changing request, who made it with which token, what it
asked for and how it ended, kept in memory as requests finish and written in batches
(like usage: an answered request never waits on it)."""

from __future__ import annotations

from datetime import UTC, datetime

from tunelab.db import RowBuffer
from tunelab.db.tables import AuditEntry


class AuditTrail(RowBuffer):
    def record(
        self,
        *,
        workspace_id: str,
        token_id: str,
        token_name: str,
        method: str,
        path: str,
        route: str,
        status: int,
    ) -> None:
        entry = AuditEntry(
            workspace_id=workspace_id,
            token_id=token_id,
            token_name=token_name,
            method=method,
            path=path[:2000],
            route=route[:128],
            status=status,
            at=datetime.now(UTC),
        )
        self.add(entry)
