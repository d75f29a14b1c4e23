"""Checking a conversation file (OpenAI chat, ShareGPT or Alpaca JSON Lines): every
problem named with its line and field, every good conversation stored as messages."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tunelab import conversations, preferences
from tunelab.conversations import BadConversation
from tunelab.dataset_rules import size_category
from tunelab.workers.cpu.csvcheck import HEAD_BYTES, MIN_ROWS, Opener, Problem, Report, check_head

BATCH_ROWS = 4096


@dataclass
class ConversationReport(Report):
    row_lines: list[int] = field(default_factory=list)
    """The line each stored conversation came from, for problems found later."""


def _items(stream: Any, head: bytes) -> Iterable[tuple[int, Any]]:
    """(line, record) of the file: JSON Lines, or one JSON array (line = item number)."""
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return conversations.records(stream)
    raw = stream.read()
    try:
        items = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        return [(1, BadConversation("encoding", None, f"The file is not UTF-8 ({exc.reason})."))]
    except json.JSONDecodeError as exc:
        return [(exc.lineno, BadConversation("invalid_json", None, f"Not valid JSON: {exc.msg}."))]
    except RecursionError:
        return [(1, BadConversation("invalid_json", None, "Nested too deeply to be records."))]
    if not isinstance(items, list):
        return [(1, BadConversation("not_a_list", None, "A JSON file must hold a list."))]
    return enumerate(items, 1)


def check_conversations(
    open_: Opener,
    fmt: str,
    sink: Callable[[pa.Table], None],
    *,
    declared_size: str | None = None,
    min_rows: int = MIN_ROWS,
) -> ConversationReport:
    """Check one file in `fmt` (or "json": the first record's keys say); deduplicated
    conversations go to `sink` as they pass."""
    report = ConversationReport()
    with open_() as stream:
        head = stream.read(HEAD_BYTES)
    problem = check_head(head, "JSON Lines")
    if problem is not None:
        report.error(problem)
        return report
    seen: set[bytes] = set()
    rows: list[dict[str, Any]] = []
    read = duplicates = 0
    turns: list[int] = []

    def flush() -> None:
        if rows and report.ok:
            schema = preferences.SCHEMA if fmt == "preference" else conversations.SCHEMA
            sink(pa.Table.from_pylist(rows, schema=schema))
        rows.clear()

    with open_() as stream:
        for line, record in _items(stream, head):
            read += 1
            if isinstance(record, BadConversation):
                report.error(Problem(record.code, f"Line {line}: {record.message}", line))
                continue
            if fmt == "json":
                fmt = conversations.detect_format(record) or "json"
                if fmt == "json":
                    report.error(
                        Problem(
                            "unknown_format",
                            f"Line {line}: not a conversation in a known format (a "
                            "'messages' list, ShareGPT 'conversations', Alpaca "
                            "'instruction' and 'output', or a preference pair's "
                            "'preferred_output').",
                            line,
                        )
                    )
                    return report
            try:
                if fmt == "preference":
                    row = preferences.parse(record)
                else:
                    row = {"messages": conversations.parse(record, fmt)}
            except BadConversation as exc:
                report.error(Problem(exc.code, f"Line {line}, {exc.message}", line, exc.field))
                continue
            digest = hashlib.blake2b(json.dumps(row).encode(), digest_size=16).digest()
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            rows.append(row)
            report.row_lines.append(line)
            # A pair's answer is a turn too.
            turns.append(sum(m["role"] == "assistant" for m in row["messages"]) + ("chosen" in row))
            if len(rows) >= BATCH_ROWS:
                flush()
    flush()
    kept = len(report.row_lines)
    if report.ok and kept < min_rows:
        report.error(
            Problem(
                "too_few_rows",
                f"The file has {kept} usable conversations; at least {min_rows} are needed.",
            )
        )
    measured = size_category(kept)
    if declared_size and declared_size != measured:
        report.error(
            Problem(
                "size_category_mismatch",
                f"The size category says {declared_size!r} but the file has {kept} "
                f"conversations ({measured!r}).",
                None,
                "size_category",
            )
        )
    if duplicates:
        report.warnings.append(
            Problem("duplicate_rows", f"{duplicates} exact duplicate conversations were dropped.")
        )
    report.stats = {
        "kind": "preference" if fmt == "preference" else "conversation",
        "rows": kept,
        "rows_read": read,
        "duplicates_dropped": duplicates,
        "size_category": measured,
        "format": fmt,
        "turns": _turns(turns),
    }
    return report


def _turns(counts: list[int]) -> dict[str, int]:
    """Assistant turns per conversation."""
    if not counts:
        return {}
    ordered = sorted(counts)
    return {
        "min": ordered[0],
        "median": ordered[len(ordered) // 2],
        "max": ordered[-1],
        "multi_turn": sum(c > 1 for c in counts),
    }
