"""Turning a conversation into training tokens with the model's chat template.

The loss is on every assistant turn whose weight is not 0: its content and the
end-of-turn token the template closes it with, and on nothing else. Where each turn
begins and ends comes from rendering, not from searching the text: the conversation is
rendered up to each assistant turn (with the generation prompt) and through it, and
each rendering must extend the one before. A template that renders earlier turns
differently once later ones exist (one that drops past reasoning, say) cannot be split
per turn and is refused with TemplateError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunelab.conversations import Message, from_pair

IGNORE = -100
"""Label of a token that takes no part in the loss (PyTorch's cross-entropy default)."""

Truncation = Literal["turns", "refuse"]


class TemplateError(ValueError):
    """The model's chat template cannot be split into prompts and answers."""


class PromptTooLong(TemplateError):
    """A prompt leaves no room for its answer within the block size."""


class ConversationTooLong(TemplateError):
    """A conversation is longer than the block size and truncation is "refuse"."""


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    def without_targets(self) -> Sample:
        """The same tokens counting for nothing (a rank's filler in a short batch)."""
        return Sample(self.input_ids, [IGNORE] * len(self.labels))


def chat_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Messages as chat templates take them (role and content only)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_prompt(tokenizer: Any, question: str, system: str | None = None) -> str:
    """The text a model is given to answer `question`: what serving sends too."""
    return render_history(tokenizer, from_pair(question, "", system)[:-1])


def render_history(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The text a model is given to answer the conversation so far."""
    text: str = tokenizer.apply_chat_template(
        chat_messages(messages), tokenize=False, add_generation_prompt=True
    )
    return text


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    return ids


def _segments(tokenizer: Any, messages: Sequence[Message]) -> list[tuple[list[int], bool, bool]]:
    """The conversation as (ids, trained, ends an assistant turn) pieces, in order."""
    turns = chat_messages(messages)
    special = _special_ids(tokenizer)
    pieces: list[tuple[list[int], bool, bool]] = []
    done = ""  # what has been rendered so far

    def ids(text: str) -> list[int]:
        # Each piece tokenised apart keeps the boundaries exact; the template holds
        # whatever special tokens it wants, so none are added here.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for k in answers:
        prompt = tokenizer.apply_chat_template(
            turns[:k], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(turns[: k + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise TemplateError(
                "the chat template cannot be split per turn: rendering a conversation "
                f"further changes what it rendered for turn {k} and before"
            )
        pieces.append((ids(prompt[len(done) :]), False, False))
        answer = ids(full[len(prompt) :])
        # The turn ends at its end-of-turn token: what the template adds after that
        # (a newline before the next turn, say) is context, not something to learn.
        ends = [i for i, t in enumerate(answer) if t in special]
        cut = ends[-1] + 1 if ends else len(answer)
        if not ends and k == answers[-1]:
            answer, cut = [*answer, tokenizer.eos_token_id], len(answer) + 1
        trained = messages[k].get("weight") != 0
        pieces.append((answer[:cut], trained, True))
        pieces.append((answer[cut:], False, False))
        done = full
    return pieces


def encode_conversation(
    tokenizer: Any,
    messages: Sequence[Message],
    block_size: int,
    truncation: Truncation = "turns",
) -> Sample:
    """Tokens and labels of one conversation within `block_size`.

    Longer ones keep their first whole turns, up to the last assistant turn that fits
    and has something to train (`truncation="turns"`); when even the first trained
    answer does not fit, its tail is cut. `"refuse"` raises ConversationTooLong instead.
    PromptTooLong when the text before the first trained answer fills the block.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    boundary = 0  # tokens up to the last assistant turn end with something trained
    first_trained_at: int | None = None
    for ids, trained, ends_turn in _segments(tokenizer, messages):
        if trained and first_trained_at is None:
            first_trained_at = len(input_ids)
        input_ids += ids
        labels += ids if trained else [IGNORE] * len(ids)
        if ends_turn and len(input_ids) <= block_size and first_trained_at is not None:
            boundary = len(input_ids)
    if len(input_ids) <= block_size:
        return Sample(input_ids, labels)
    if truncation == "refuse":
        raise ConversationTooLong(f"a conversation is {len(input_ids)} tokens, over {block_size}")
    if boundary == 0:
        start = first_trained_at or 0
        if start >= block_size:
            raise PromptTooLong(f"a prompt alone is {start} tokens, over {block_size}")
        boundary = block_size
    return Sample(input_ids[:boundary], labels[:boundary], truncated=True)


def encode_pair(
    tokenizer: Any, question: str, answer: str, block_size: int, system: str | None = None
) -> Sample:
    """Tokens and labels of one question/answer pair (a one-turn conversation)."""
    return encode_conversation(tokenizer, from_pair(question, answer, system), block_size)
