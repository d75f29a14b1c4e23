"""Chats kept because their request said `store: true` (or their service stores every
chat): queued in memory as they finish and written in batches, like usage, and deleted
once the operator's retention has passed. Nothing else of a chat is written anywhere.
Stored chats, and votes for the best answer of a comparison, can become a dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from tunelab.db import Database, RowBuffer
from tunelab.db.tables import ChatVote, StoredChat


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


def _answer(chat: StoredChat) -> str:
    return str(chat.completion["choices"][0]["message"]["content"])


def chat_records(
    db: Database,
    workspace_id: str,
    kind: str,
    service: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """The workspace's stored chats as dataset records, oldest first.

    `sft`: each chat (of `service`, when given) as an OpenAI chat record, its answer the
    last turn. `preference`: each voted comparison (one `service` took part in, when
    given) as OpenAI preference records, one per other answer: the voted answer
    preferred. Answers equal to the voted one, and votes whose chats were not stored
    (or are past their retention), give nothing.
    """
    with db.session() as session:
        chats = select(StoredChat).where(StoredChat.workspace_id == workspace_id)
        if since is not None:
            chats = chats.where(StoredChat.created_at >= since)
        if until is not None:
            chats = chats.where(StoredChat.created_at < until)
        rows = list(session.scalars(chats.order_by(StoredChat.created_at)))
        if kind == "sft":
            for chat in rows:
                if service is None or chat.service == service:
                    answer = {"role": "assistant", "content": _answer(chat)}
                    yield {"messages": [*chat.messages, answer]}
            return
        compared: dict[str, list[StoredChat]] = {}
        for chat in rows:
            comparison = (chat.metadata_ or {}).get("comparison")
            if comparison:
                compared.setdefault(comparison, []).append(chat)
        votes = select(ChatVote).where(ChatVote.workspace_id == workspace_id)
        if since is not None:  # a vote comes after its chats
            votes = votes.where(ChatVote.created_at >= since)
        for vote in session.scalars(votes.order_by(ChatVote.created_at)):
            answers = compared.get(vote.id, [])
            best = next((c for c in answers if c.service == vote.best), None)
            if best is None or (service is not None and all(c.service != service for c in answers)):
                continue
            chosen = _answer(best)
            for other in answers:
                rejected = _answer(other)
                # Only answers to the same conversation compare (in a multi-turn chat each
                # service saw its own earlier answers), and only different, non-empty ones.
                if (
                    other is best
                    or other.messages != best.messages
                    or not rejected.strip()
                    or not chosen.strip()
                    or rejected.strip() == chosen.strip()
                ):
                    continue
                yield {
                    "input": {"messages": best.messages},
                    "preferred_output": [{"role": "assistant", "content": chosen}],
                    "non_preferred_output": [{"role": "assistant", "content": rejected}],
                }
