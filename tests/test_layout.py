"""The layout's rules that the import contracts cannot see by themselves."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = {"functions", "events", "workers", "cli", "launcher", "client", "commands"}
"""What sits above the core (events beside it: it has its own line in the contract)."""


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["importlinter"]["contracts"])


def test_every_module_of_the_core_is_held_to_the_downward_rule() -> None:
    (core_rule,) = [c for c in contracts() if "tunelab.functions" in c.get("forbidden_modules", [])]
    listed = set(core_rule["source_modules"])  # type: ignore[arg-type]
    core = {
        f"tunelab.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "tunelab").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and not path.is_symlink() and (path / "__init__.py").exists())
    } - {f"tunelab.{room}" for room in ROOMS}
    assert core - listed == set(), "core modules the contract does not hold"
    assert listed - core <= {"tunelab.events"}, "the contract lists modules that are gone"


def test_the_rooms_are_linked_where_python_imports_them() -> None:
    for room in ("functions", "events", "workers"):
        link = ROOT / "tunelab" / room
        assert link.is_symlink() and link.resolve() == ROOT / room


def test_nothing_shipped_imports_the_tests_or_the_benchmarks() -> None:
    offenders = []
    for folder in ("tunelab", "functions", "events", "workers"):
        for path in (ROOT / folder).rglob("*.py"):
            if "tunelab/functions" in str(path) or "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                offenders += [
                    f"{path.relative_to(ROOT)}: {n}"
                    for n in names
                    if n.split(".")[0] in ("tests", "bench")
                ]
    assert offenders == []
