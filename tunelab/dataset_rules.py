"""Limits and vocabularies of datasets that the API and the workers share."""

from __future__ import annotations

from typing import Any

MAX_DATASET_BYTES = 50 << 20
"""The largest file a dataset may have (each split)."""

SIZE_CATEGORIES: dict[str, tuple[int, int | None]] = {
    "n<1K": (0, 1_000),
    "1K<n<10K": (1_000, 10_000),
    "10K<n<100K": (10_000, 100_000),
    "100K<n<1M": (100_000, 1_000_000),
    "n>1M": (1_000_000, None),
}

QA_MAPPING = {"question": "question", "answer": "answer"}
"""A Q&A CSV's fields, named as their columns are by default."""
PREFERENCE_MAPPING = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
"""A preference CSV's fields (what DPO trains on), named as their columns by default."""

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""Cell starts a spreadsheet may run as a formula (OWASP's CSV injection list)."""


def size_category(rows: int) -> str:
    for name, (low, high) in SIZE_CATEGORIES.items():
        if rows >= low and (high is None or rows < high):
            return name
    raise AssertionError(rows)


def neutralise(cell: str) -> str:
    """Keep a spreadsheet from running a cell as a formula: prefix it with a quote."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def upload_prefix(workspace_name: str) -> str:
    """Where a workspace's clients may put dataset files in the platform's bucket."""
    return f"uploads/{workspace_name}/"


def dataset_kind(stats: dict[str, Any] | None) -> str | None:
    """What a validated dataset (by its stats) trains: "preference" pairs (DPO) or
    "sft" answers; None before it is validated."""
    train = (stats or {}).get("train")
    if not train:
        return None
    return "preference" if train.get("kind") == "preference" else "sft"
