"""Preference pairs, what DPO trains on: a prompt (a conversation that ends on the
user's turn) and two answers to it, the chosen and the rejected.

Two file shapes bring them in: a CSV with prompt, chosen and rejected columns (named by
the feature mapping, as a Q&A CSV's are), and OpenAI's preference JSON Lines
(`input.messages`, `preferred_output`, `non_preferred_output`). A problem names its
field in the file's own terms (`preferred_output[0].content`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tunelab.conversations import MESSAGE, BadConversation, Message, Turn, check

COLUMNS = ("prompt", "chosen", "rejected")
"""A preference CSV's fields, in the feature mapping and in the stored Parquet."""
SCHEMA = pa.schema(
    [("messages", pa.list_(MESSAGE)), ("chosen", pa.string()), ("rejected", pa.string())]
)
"""A preference JSONL's Parquet: the prompt's messages and the two answers."""


@dataclass(frozen=True)
class Preference:
    prompt: list[Message]
    """The conversation so far, ending on the user's turn."""
    chosen: str
    rejected: str

    def conversation(self, answer: str) -> list[Message]:
        """The prompt answered with `answer`: the only trained turn is the answer."""
        context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in self.prompt]
        return [*context, {"role": "assistant", "content": answer, "weight": None}]


def is_preference(names: list[str]) -> bool:
    """Whether a stored split (by its column names) holds preference pairs."""
    return "chosen" in names and "rejected" in names


def preferences_of(table: pa.Table) -> list[Preference]:
    """A stored preference split's pairs, from a CSV's columns or a JSONL's messages."""
    chosen, rejected = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
    if "messages" in table.column_names:
        prompts = table.column("messages").to_pylist()
    else:
        prompts = [
            [{"role": "user", "content": p, "weight": None}]
            for p in table.column("prompt").to_pylist()
        ]
    return [Preference(p, c, r) for p, c, r in zip(prompts, chosen, rejected, strict=True)]


def parse(record: Any) -> dict[str, Any]:
    """An OpenAI preference record as a stored row; BadConversation names the problem."""
    if not isinstance(record, dict):
        raise BadConversation("not_an_object", None, "The record is not a JSON object.")
    given = record.get("input")
    if not isinstance(given, dict):
        raise BadConversation(
            "missing_field" if given is None else "not_an_object",
            "input",
            "input: required, an object with the prompt's messages.",
        )
    items = given.get("messages")
    if not isinstance(items, list) or not items:
        raise BadConversation(
            "not_a_list", "input.messages", "input.messages: must be a non-empty list of messages."
        )
    turns = []
    for i, item in enumerate(items):
        at = f"input.messages[{i}]"
        if not isinstance(item, dict):
            raise BadConversation("not_an_object", at, f"{at}: must be an object.")
        role, content = item.get("role"), item.get("content")
        if role not in ("system", "user", "assistant"):
            raise BadConversation(
                "unknown_role",
                f"{at}.role",
                f"{at}.role: {role!r} is not system, user or assistant.",
            )
        if not isinstance(content, str):
            raise BadConversation(
                "not_a_string", f"{at}.content", f"{at}.content: must be a string."
            )
        turns.append(Turn(role, content, None, at))
    if turns[-1].role != "user":
        where = turns[-1].at
        raise BadConversation(
            "prompt_not_on_user", where, f"{where}: the prompt must end on the user's turn."
        )
    answers = [_answer(record, key) for key in ("preferred_output", "non_preferred_output")]
    # The prompt with each answer is a conversation: the same rules hold for it.
    for turn in answers:
        check([*turns, turn])
    if answers[0].content == answers[1].content:
        raise BadConversation(
            "same_answers",
            "non_preferred_output[0].content",
            "non_preferred_output[0].content: the same as the preferred output; "
            "a pair must differ.",
        )
    return {
        "messages": [{"role": t.role, "content": t.content, "weight": None} for t in turns],
        "chosen": answers[0].content,
        "rejected": answers[1].content,
    }


def _answer(record: dict[str, Any], key: str) -> Turn:
    value = record.get(key)
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise BadConversation(
            "missing_field" if value is None else "not_a_list",
            key,
            f"{key}: required, a list of one assistant message.",
        )
    at = f"{key}[0]"
    if value[0].get("role", "assistant") != "assistant":
        raise BadConversation("unknown_role", f"{at}.role", f"{at}.role: must be assistant.")
    content = value[0].get("content")
    if not isinstance(content, str):
        raise BadConversation("not_a_string", f"{at}.content", f"{at}.content: must be a string.")
    return Turn("assistant", content, None, at)
