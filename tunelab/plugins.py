"""Dataset plugins: turn parameters into question/answer rows.

A plugin is any object with a `name` and a `rows(parameters, fetch)` method, published
under the `tunelab.dataset_plugins` entry-point group:

    [project.entry-points."tunelab.dataset_plugins"]
    my-source = "my_package.module:MyPlugin"

`fetch(uri)` returns the bytes behind an http(s) or s3 address, through the same size
cap and address checks as remote datasets. `rows` yields (question, answer) pairs, or
conversation records (JSON objects in the format its optional `format` attribute names:
openai, sharegpt or alpaca; else told by their keys), and raises PluginError where its
input cannot be read. Its rows then go through every check an uploaded file gets.
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

    def rows(self, parameters: dict[str, Any], fetch: Fetch) -> Iterator[Any]: ...


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


class Alpaca:
    """Alpaca instruction data (`instruction`, `input`, `output`; LLaMA-Factory's
    `system` and `history` too): each record is one conversation."""

    name = "alpaca"
    format = "alpaca"

    def rows(self, parameters: dict[str, Any], fetch: Fetch) -> Iterator[Any]:
        for _, record in _records(parameters, fetch):
            yield record


class ChatJsonl:
    """OpenAI chat-format JSONL (`messages`): each record is one whole conversation."""

    name = "chat-jsonl"
    format = "openai"

    def rows(self, parameters: dict[str, Any], fetch: Fetch) -> Iterator[Any]:
        for _, record in _records(parameters, fetch):
            yield record
