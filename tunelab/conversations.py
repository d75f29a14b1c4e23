"""Conversations, the unit of a dataset: an optional system message, then user and
assistant turns that alternate, starting with the user and ending with the assistant.
Each assistant turn has a weight, 1 (trained) or 0 (context only), as in OpenAI's chat
format; stored as given, None where the file gave none (trained).

Three file formats bring them in, one JSON object per line (or one JSON array):
OpenAI chat (`messages`), ShareGPT (`conversations` of `from`/`value`) and Alpaca
(`instruction`, `input`, `output`, with LLaMA-Factory's optional `system` and `history`).
A problem names the field it is in, in the file's own terms (`messages[3].role`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

ROLES = ("system", "user", "assistant")
FORMATS = ("openai", "sharegpt", "alpaca", "preference")
"""`preference` is OpenAI's preference format, whose records are pairs (see preferences)."""
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
UNSUPPORTED_KEYS = ("tool_calls", "function_call", "tools", "functions", "audio", "refusal")
"""Keys of OpenAI's format for tools and audio, which tunelab does not train on."""

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int8())])
SCHEMA = pa.schema([("messages", pa.list_(MESSAGE))])
"""A conversation dataset's Parquet: one row per conversation, its messages a list."""

Message = dict[str, Any]


class BadConversation(ValueError):
    """One conversation breaks a rule; `field` says where, in the file's terms."""

    def __init__(self, code: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.code, self.field, self.message = code, field, message


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    weight: int | None
    at: str
    """Where the turn is in its record (`messages[3]`, `conversations[1]`, `output`)."""
    content_key: str = "content"


def detect_format(record: Any) -> str | None:
    """The format a record is written in, from its keys; None when none fits."""
    if not isinstance(record, dict):
        return None
    if "preferred_output" in record or "non_preferred_output" in record:
        return "preference"
    for fmt, key in (("openai", "messages"), ("sharegpt", "conversations")):
        if key in record:
            return fmt
    return "alpaca" if "instruction" in record or "output" in record else None


def parse(record: Any, fmt: str) -> list[Message]:
    """The record's conversation as messages; BadConversation names what is wrong."""
    if not isinstance(record, dict):
        raise BadConversation("not_an_object", None, "The record is not a JSON object.")
    turns = {"openai": _openai, "sharegpt": _sharegpt, "alpaca": _alpaca}[fmt](record)
    check(turns)
    return [
        {
            "role": t.role,
            "content": t.content,
            "weight": t.weight if t.role == "assistant" else None,
        }
        for t in turns
    ]


def from_pair(question: str, answer: str, system: str | None = None) -> list[Message]:
    """A question/answer pair as a one-turn conversation."""
    head = [{"role": "system", "content": system, "weight": None}] if system else []
    return [
        *head,
        {"role": "user", "content": question, "weight": None},
        {"role": "assistant", "content": answer, "weight": None},
    ]


def split_last_answer(messages: list[Message]) -> tuple[list[Message], str]:
    """Everything before the last assistant turn, and that turn's content: what a model
    is given to answer, and the reference it is scored against."""
    return messages[:-1], messages[-1]["content"]


def conversations_of(table: pa.Table) -> list[list[Message]]:
    """A stored split's conversations, whether it holds conversations or (stored before
    conversations were the unit) question/answer pairs."""
    if "messages" in table.column_names:
        rows: list[list[Message]] = table.column("messages").to_pylist()
        return rows
    questions, answers = table.column("question").to_pylist(), table.column("answer").to_pylist()
    return [from_pair(q, a) for q, a in zip(questions, answers, strict=True)]


def records(lines: Iterable[bytes]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) of JSON Lines; a line that is not a record yields a
    BadConversation in its place. Blank lines are skipped but counted."""
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            yield (
                number,
                BadConversation("encoding", None, f"The line is not UTF-8 ({exc.reason})."),
            )
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, BadConversation("invalid_json", None, f"Not valid JSON: {exc.msg}.")
        except RecursionError:
            yield number, BadConversation("invalid_json", None, "Nested too deeply to be a record.")


# ---- the three formats ---------------------------------------------------------------


def _reject_unsupported(item: dict[str, Any], at: str) -> None:
    for key in UNSUPPORTED_KEYS:
        if item.get(key) is not None:
            where = f"{at}.{key}" if at else key
            raise BadConversation(
                "unsupported_feature", where, f"{where}: tools and audio are not trained on."
            )


def _list(record: dict[str, Any], key: str) -> list[Any]:
    value = record.get(key)
    if value is None:
        raise BadConversation("missing_field", key, f"{key}: required.")
    if not isinstance(value, list):
        raise BadConversation("not_a_list", key, f"{key}: must be a list of messages.")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise BadConversation("not_a_string", where, f"{where}: {kind}.")
    return value


def _weight(item: dict[str, Any], at: str) -> int | None:
    if "weight" not in item:
        return None
    value = item["weight"]
    if isinstance(value, bool) or value not in (0, 1):
        raise BadConversation("bad_weight", f"{at}.weight", f"{at}.weight: must be 0 or 1.")
    return int(value)


def _role(value: Any, where: str, known: Iterable[str]) -> str:
    names = list(known)
    if isinstance(value, str) and value in names:
        return value
    shown = (
        repr(value) if isinstance(value, str) else "missing" if value is None else "not a string"
    )
    close = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadConversation(
        "unknown_role", where, f"{where}: {shown} is not one of {', '.join(names)}{hint}."
    )


def _openai(record: dict[str, Any]) -> list[Turn]:
    _reject_unsupported(record, "")
    turns = []
    for i, item in enumerate(_list(record, "messages")):
        at = f"messages[{i}]"
        if not isinstance(item, dict):
            raise BadConversation("not_an_object", at, f"{at}: must be an object.")
        _reject_unsupported(item, at)
        role = _role(item.get("role"), f"{at}.role", ROLES)
        turns.append(Turn(role, _text(item.get("content"), f"{at}.content"), _weight(item, at), at))
    return turns


def _sharegpt(record: dict[str, Any]) -> list[Turn]:
    turns = []
    if record.get("system") is not None:
        turns.append(Turn("system", _text(record["system"], "system"), None, "system", ""))
    for i, item in enumerate(_list(record, "conversations")):
        at = f"conversations[{i}]"
        if not isinstance(item, dict):
            raise BadConversation("not_an_object", at, f"{at}: must be an object.")
        role = SHAREGPT_ROLES[_role(item.get("from"), f"{at}.from", SHAREGPT_ROLES)]
        content = _text(item.get("value"), f"{at}.value")
        turns.append(Turn(role, content, _weight(item, at), at, "value"))
    return turns


def _alpaca(record: dict[str, Any]) -> list[Turn]:
    turns = []
    if record.get("system") is not None:
        turns.append(Turn("system", _text(record["system"], "system"), None, "system", ""))
    history = record.get("history") or []
    if not isinstance(history, list):
        raise BadConversation("not_a_list", "history", "history: must be a list of [q, a].")
    for i, pair in enumerate(history):
        at = f"history[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise BadConversation("not_a_list", at, f"{at}: must be [question, answer].")
        turns.append(Turn("user", _text(pair[0], f"{at}[0]"), None, f"{at}[0]", ""))
        turns.append(Turn("assistant", _text(pair[1], f"{at}[1]"), None, f"{at}[1]", ""))
    instruction = _text(record.get("instruction"), "instruction")
    extra = record.get("input")
    extra = "" if extra is None else _text(extra, "input")
    question = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns.append(Turn("user", question, None, "instruction", ""))
    turns.append(Turn("assistant", _text(record.get("output"), "output"), None, "output", ""))
    return turns


# ---- the rules every conversation follows --------------------------------------------


def _content_field(turn: Turn) -> str:
    return f"{turn.at}.{turn.content_key}" if turn.content_key else turn.at


def check(turns: list[Turn]) -> None:
    """Roles in order, contents non-empty, something to train; raises BadConversation."""
    for turn in turns:
        where = _content_field(turn)
        if not turn.content.strip():
            raise BadConversation("empty_content", where, f"{where}: empty or only whitespace.")
        if "\x00" in turn.content:
            raise BadConversation("binary_content", where, f"{where}: holds a NUL byte.")
        if turn.weight is not None and turn.role != "assistant":
            raise BadConversation(
                "bad_weight",
                f"{turn.at}.weight",
                f"{turn.at}.weight: only assistant turns have one.",
            )
    body = turns[1:] if turns and turns[0].role == "system" else turns
    for turn in body:
        if turn.role == "system":
            code = "two_system_messages" if turns[0].role == "system" else "system_not_first"
            raise BadConversation(
                code, turn.at, f"{turn.at}: a conversation has one system message, first."
            )
    if not any(t.role == "user" for t in body):
        raise BadConversation("no_user_turn", None, "The conversation has no user turn.")
    if not any(t.role == "assistant" for t in body):
        raise BadConversation("no_assistant_turn", None, "The conversation has no assistant turn.")
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise BadConversation(
                "wrong_role_order",
                turn.at,
                f"{turn.at}: a {expected} turn was expected here, not {turn.role} "
                "(turns alternate, starting with the user).",
            )
    if body[-1].role != "assistant":
        raise BadConversation(
            "ends_on_user", body[-1].at, f"{body[-1].at}: the last turn must be the assistant's."
        )
    if all(t.weight == 0 for t in body if t.role == "assistant"):
        raise BadConversation(
            "nothing_to_train", None, "Every assistant turn has weight 0: nothing to train on."
        )
