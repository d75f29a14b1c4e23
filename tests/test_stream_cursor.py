"""The live stream's cursor delivers events committed out of order, each once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tunelab.functions.events_api import StreamCursor


def rows(*seqs: int) -> list[Any]:
    return [SimpleNamespace(seq=s) for s in seqs]


def test_a_late_commit_below_the_newest_is_still_delivered() -> None:
    cursor = StreamCursor(6)
    assert [r.seq for r in cursor.fresh(rows(8))] == [8]  # 7 not committed yet
    assert cursor.seq == 6
    assert [r.seq for r in cursor.fresh(rows(7, 8))] == [7]  # 8 is not sent twice
    assert cursor.seq == 8


def test_a_gap_that_never_fills_is_given_up_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 5.0])
    monkeypatch.setattr("tunelab.functions.events_api.time.monotonic", lambda: next(clock))
    cursor = StreamCursor(0)
    assert [r.seq for r in cursor.fresh(rows(2, 3))] == [2, 3]
    assert cursor.fresh(rows(2, 3)) == [] and cursor.seq == 0
    assert cursor.fresh(rows(2, 3)) == [] and cursor.seq == 3
