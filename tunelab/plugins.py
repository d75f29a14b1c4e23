"""Dataset plugins: turn parameters into question/answer rows.

A plugin is any object with a `name` and a `rows(parameters, fetch)` method, published
under the `tunelab.dataset_plugins` entry-point group:

    [project.entry-points."tunelab.dataset_plugins"]
    my-source = "my_package.module:MyPlugin"

`fetch(uri)` returns the bytes behind an http(s) or s3 address, through the same size
cap and address checks as remote datasets. `rows` yields (question, answer) pairs and
raises PluginError naming the line and field of bad input. Its rows then go through
every check a CSV upload gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Protocol

from tunelab.errors import PermanentFailure

GROUP = "tunelab.dataset_plugins"
Fetch = Callable[[str], bytes]


class PluginError(PermanentFailure):
    """The plugin's input is wrong; `details` name where."""

    code = "plugin_error"


class DatasetPlugin(Protocol):
    name: str

    def rows(self, parameters: dict[str, Any], fetch: Fetch) -> Iterator[tuple[str, str]]: ...


def available() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(name: str) -> DatasetPlugin:
    found = available().get(name)
    if found is None:
        raise PluginError(
            f"No dataset plugin named {name!r}; installed: {sorted(available())}.",
            [{"field": "source.plugin", "message": "unknown plugin"}],
        )
    return found.load()()  # type: ignore[no-any-return]


def _records(parameters: dict[str, Any], fetch: Fetch) -> Iterator[tuple[int, Any]]:
    """(line, record) from JSON Lines, or from one JSON array (line = item number)."""
    uri = parameters.get("uri")
    if not isinstance(uri, str):
        raise PluginError(
            "The plugin needs parameters.uri, the address of its file.",
            [{"field": "source.parameters.uri", "message": "required"}],
        )
    try:
        text = fetch(uri).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PluginError(
            f"The file at {uri} is not UTF-8 text.",
            [{"field": "source.parameters.uri", "message": str(exc)}],
        ) from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PluginError(
                "The file is not valid JSON.", [{"line": exc.lineno, "message": exc.msg}]
            ) from None
        except RecursionError:
            raise PluginError("The file's JSON is nested too deeply to be records.") from None
        yield from enumerate(items, 1)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PluginError(
                f"Line {number} is not valid JSON.", [{"line": number, "message": exc.msg}]
            ) from None
        except RecursionError:
            message = "nested too deeply to be a record"
            raise PluginError(
                f"Line {number} is {message}.", [{"line": number, "message": message}]
            ) from None
        yield number, record


def _text(record: Any, key: str, line: int, required: bool = True) -> str:
    value = record.get(key) if isinstance(record, dict) else None
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise PluginError(
            f"Record {line} has no text field {key!r}.",
            [{"line": line, "field": key, "message": "missing or not a string"}],
        )
    return value


class Alpaca:
    """Alpaca instruction data: instruction (+ input) is the question, output the answer."""

    name = "alpaca"

    def rows(self, parameters: dict[str, Any], fetch: Fetch) -> Iterator[tuple[str, str]]:
        for line, record in _records(parameters, fetch):
            instruction = _text(record, "instruction", line)
            extra = _text(record, "input", line, required=False)
            question = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            yield question, _text(record, "output", line)


class ChatJsonl:
    """OpenAI chat-format JSONL: the last user turn before the final assistant turn is
    the question, that assistant turn the answer."""

    name = "chat-jsonl"

    def rows(self, parameters: dict[str, Any], fetch: Fetch) -> Iterator[tuple[str, str]]:
        for line, record in _records(parameters, fetch):
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list):
                raise PluginError(
                    f"Record {line} has no 'messages' list.",
                    [{"line": line, "field": "messages", "message": "required"}],
                )
            turns = [m for m in messages if isinstance(m, dict)]
            answer_at = max(
                (i for i, m in enumerate(turns) if m.get("role") == "assistant"), default=None
            )
            question_at = max(
                (i for i, m in enumerate(turns[: answer_at or 0]) if m.get("role") == "user"),
                default=None,
            )
            if answer_at is None or question_at is None:
                raise PluginError(
                    f"Record {line} needs a user turn followed by an assistant turn.",
                    [{"line": line, "field": "messages", "message": "no user/assistant pair"}],
                )
            yield (
                _text(turns[question_at], "content", line),
                _text(turns[answer_at], "content", line),
            )
