"""Chats kept because their request said `store: true` (or their service stores every
chat): queued in memory as they finish and written in batches, like usage, and deleted
once the operator's retention has passed. Nothing else of a chat is written anywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete

from tunelab.db import Database, RowBuffer
from tunelab.db.tables import StoredChat


class ChatArchive(RowBuffer):
    def __init__(self, retention_days: float) -> None:
        super().__init__()
        self.retention = timedelta(days=retention_days)
        self._pruned_at = datetime.min.replace(tzinfo=UTC)

    def keep(
        self,
        *,
        chat_id: str,
        workspace_id: str,
        service: str,
        messages: list[dict[str, Any]],
        completion: dict[str, Any],
        metadata: dict[str, str] | None,
    ) -> None:
        now = datetime.now(UTC)
        row = StoredChat(
            id=chat_id,
            workspace_id=workspace_id,
            service=service,
            messages=messages,
            completion=completion,
            metadata_=metadata or {},
            created_at=now,
            expires_at=now + self.retention,
        )
        self.add(row)

    def flush(self, db: Database) -> None:
        super().flush(db)
        now = datetime.now(UTC)
        if now - self._pruned_at > timedelta(minutes=10):
            prune(db, now)
            self._pruned_at = now


def prune(db: Database, now: datetime) -> int:
    """Delete stored chats past their retention; how many went."""
    with db.session() as session:
        result = session.execute(delete(StoredChat).where(StoredChat.expires_at < now))
        return int(result.rowcount)  # type: ignore[attr-defined]
