"""Usage metering without a chat: tallies add up in memory, and every process's flush
adds to the same rows instead of replacing them."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from tunelab.auth import ensure_workspace
from tunelab.db import Database
from tunelab.db.tables import UsageRecord
from tunelab.serving.usage import UsageMeter, quantile


def test_two_processes_flushes_add_up_in_one_row_per_service_and_hour(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    db.migrate()
    with db.session() as session:
        workspace = ensure_workspace(session, "acme").id
    api, batches = UsageMeter(), UsageMeter()
    api.record(workspace, "acme", "bot", "ok", 10, 5, total_s=0.04, ttft_s=0.008)
    api.record(workspace, "acme", "bot", "cancelled", 10, 2, total_s=0.02)
    batches.record(workspace, "acme", "bot", "error", 7, 0, total_s=3.0)
    batches.record(workspace, "acme", "other", "ok", 1, 1, total_s=0.001)
    api.flush(db)
    batches.flush(db)
    api.record(workspace, "acme", "bot", "ok", 3, 3, total_s=0.2)
    api.flush(db)
    with db.session() as session:
        rows = {r.service: r for r in session.scalars(select(UsageRecord))}
    bot = rows["bot"]
    assert (bot.requests, bot.errors, bot.cancelled) == (4, 1, 1)
    assert (bot.prompt_tokens, bot.completion_tokens) == (30, 10)
    assert bot.ttft_ms["count"] == 1 and quantile(bot.ttft_ms, 0.5) == 10
    assert bot.latency_ms["count"] == 4 and quantile(bot.latency_ms, 0.99) == 5000
    assert rows["other"].requests == 1
    api.flush(db)  # nothing new: nothing written
    with db.session() as session:
        assert session.get(UsageRecord, bot.id).requests == 4  # type: ignore[union-attr]
    db.dispose()
