"""How the CLI shows things: tables (or JSON with `--output json`), a dataset's
problems with their lines, and progress bars, all with Rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
errors = Console(stderr=True)


def listing(
    rows: Sequence[BaseModel | dict[str, Any]], columns: Sequence[str], output: str
) -> None:
    """Rows as a table of `columns`, or every field of every row as JSON."""
    plain = [r.model_dump(mode="json") if isinstance(r, BaseModel) else r for r in rows]
    if output == "json":
        sys.stdout.write(json.dumps(plain, indent=2) + "\n")
        return
    table = Table(*[c.upper().replace("_", " ") for c in columns])
    for row in plain:
        table.add_row(*[Text(_cell(row.get(c))) for c in columns])
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def problems(error: dict[str, Any] | None, limit: int = 10) -> None:
    """A failed dataset's first problems, each with its file, line and field."""
    if not error:
        return
    # Messages quote what users sent: printed as they are, never read as markup.
    errors.print(error.get("message", "failed"), style="red", markup=False)
    for detail in (error.get("details") or [])[:limit]:
        where = [detail.get("file"), f"line {detail['line']}" if detail.get("line") else None]
        where.append(detail.get("field"))
        place = ", ".join(str(w) for w in where if w)
        line = f"  {place}: {detail.get('message')}" if place else f"  {detail}"
        errors.print(line, markup=False)
