"""Usage of the model services, metered beside the chats: per workspace, service and
hour, requests, errors, tokens and latency histograms, added up in memory and written
to the database in batches by a flusher thread, never on a chat's path.

A process that dies loses at most one flush interval of counts; every process adds its
own counts to the same rows, so API replicas and batch workers share one table.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tunelab.db import Database
from tunelab.db.tables import UsageRecord
from tunelab.metrics import CHAT_DURATION, CHAT_REQUESTS, CHAT_TOKENS, CHAT_TTFT

log = logging.getLogger("tunelab.serving")

BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000)
"""Upper bounds of the latency histograms' buckets; a last bucket holds what is above."""


def empty_histogram() -> dict[str, Any]:
    return {"buckets": [0] * (len(BUCKETS_MS) + 1), "count": 0, "sum": 0.0}


def add_histograms(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return {
        "buckets": [a + b for a, b in zip(into["buckets"], other["buckets"], strict=True)],
        "count": into["count"] + other["count"],
        "sum": into["sum"] + other["sum"],
    }


def quantile(histogram: dict[str, Any], q: float) -> float | None:
    """The q-quantile's bucket bound (an upper estimate, as Prometheus' would be)."""
    count = histogram["count"]
    if not count:
        return None
    rank, seen = q * count, 0
    for bound, n in zip((*BUCKETS_MS, float("inf")), histogram["buckets"], strict=True):
        seen += n
        if seen >= rank:
            return float(bound)
    return float("inf")


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: dict[str, Any] = field(default_factory=empty_histogram)
    latency_ms: dict[str, Any] = field(default_factory=empty_histogram)


COUNTS = ("requests", "errors", "cancelled", "prompt_tokens", "completion_tokens")


def _observe(histogram: dict[str, Any], ms: float) -> None:
    histogram["buckets"][bisect.bisect_left(BUCKETS_MS, ms)] += 1
    histogram["count"] += 1
    histogram["sum"] += ms


Outcome = str
"""ok, error or cancelled (the client went away)."""


class UsageMeter:
    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str, datetime], Tally] = {}
        self._lock = threading.Lock()

    def record(
        self,
        workspace_id: str,
        workspace: str,
        service: str,
        outcome: Outcome,
        prompt_tokens: int,
        completion_tokens: int,
        total_s: float,
        ttft_s: float | None = None,
    ) -> None:
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        with self._lock:
            tally = self._tallies.setdefault((workspace_id, service, hour), Tally())
            tally.requests += 1
            tally.errors += outcome == "error"
            tally.cancelled += outcome == "cancelled"
            tally.prompt_tokens += prompt_tokens
            tally.completion_tokens += completion_tokens
            _observe(tally.latency_ms, total_s * 1000)
            if ttft_s is not None:
                _observe(tally.ttft_ms, ttft_s * 1000)
        labels = (workspace, service)
        CHAT_REQUESTS.labels(*labels, outcome).inc()
        CHAT_TOKENS.labels(*labels, "prompt").inc(prompt_tokens)
        CHAT_TOKENS.labels(*labels, "completion").inc(completion_tokens)
        CHAT_DURATION.labels(*labels).observe(total_s)
        if ttft_s is not None:
            CHAT_TTFT.labels(*labels).observe(ttft_s)

    def take(self) -> dict[tuple[str, str, datetime], Tally]:
        with self._lock:
            tallies, self._tallies = self._tallies, {}
        return tallies

    def put_back(self, tallies: dict[tuple[str, str, datetime], Tally]) -> None:
        """Counts a failed flush could not write, to be written by the next."""
        with self._lock:
            for key, old in tallies.items():
                tally = self._tallies.setdefault(key, Tally())
                for name in COUNTS:
                    setattr(tally, name, getattr(tally, name) + getattr(old, name))
                tally.ttft_ms = add_histograms(tally.ttft_ms, old.ttft_ms)
                tally.latency_ms = add_histograms(tally.latency_ms, old.latency_ms)

    def flush(self, db: Database) -> None:
        tallies = self.take()
        if not tallies:
            return
        try:
            write(db, tallies)
        except Exception:
            self.put_back(tallies)
            raise


def write(db: Database, tallies: dict[tuple[str, str, datetime], Tally]) -> None:
    """Add the tallies to their rows, in one transaction; a row another process inserted
    meanwhile makes the transaction run again, updating it."""
    for attempt in range(3):
        try:
            with db.session() as session:
                for (workspace_id, service, hour), tally in tallies.items():
                    row = session.scalar(
                        select(UsageRecord)
                        .where(
                            UsageRecord.workspace_id == workspace_id,
                            UsageRecord.service == service,
                            UsageRecord.hour == hour,
                        )
                        .with_for_update()
                    )
                    if row is None:
                        session.add(
                            UsageRecord(
                                workspace_id=workspace_id,
                                service=service,
                                hour=hour,
                                ttft_ms=tally.ttft_ms,
                                latency_ms=tally.latency_ms,
                                **{name: getattr(tally, name) for name in COUNTS},
                            )
                        )
                        continue
                    for name in COUNTS:
                        setattr(row, name, getattr(row, name) + getattr(tally, name))
                    row.ttft_ms = add_histograms(row.ttft_ms, tally.ttft_ms)
                    row.latency_ms = add_histograms(row.latency_ms, tally.latency_ms)
            return
        except IntegrityError:
            if attempt == 2:
                raise


class Flusher(threading.Thread):
    """Runs each of `jobs` every `interval_s` seconds, and once more when stopped."""

    def __init__(self, jobs: list[Callable[[], None]], interval_s: float) -> None:
        super().__init__(name="traffic-flusher", daemon=True)
        self.jobs, self.interval_s = jobs, interval_s
        self.stopping = threading.Event()

    def run_jobs(self) -> None:
        for job in self.jobs:
            try:
                job()
            except Exception:  # the counts stay in memory for the next try
                log.warning("a traffic flush failed; trying again later", exc_info=True)

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            self.run_jobs()
        self.run_jobs()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
