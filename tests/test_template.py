"""Masks from rendering: on templates of four shapes, the trained tokens are exactly each
weighted assistant turn's content and its end-of-turn token."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunelab.tokenizer import CHAT_TEMPLATE
from tunelab.training.basemodel import tiny_tokenizer
from tunelab.training.template import (
    IGNORE,
    ConversationTooLong,
    PromptTooLong,
    TemplateError,
    encode_conversation,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Llama-2's shape: the system prompt lives inside the first user turn.
SYSTEM_IN_USER = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set sys = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}"
    "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] "
    "{% if loop.first %}{{ sys }}{% endif %}{{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)
# Renders past answers differently once the conversation goes on (as templates that
# drop earlier reasoning do): it cannot be split per turn.
REWRITES_THE_PAST = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "<|assistant|>(earlier answer)<|eos|>{% else %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# template, special tokens, end of sequence, what a trained turn is
SHAPES: dict[str, tuple[str, list[str], str, Callable[[str], str]]] = {
    "built-in": (CHAT_TEMPLATE, [], "<|eos|>", lambda c: f"{c}<|eos|>"),
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", lambda c: f"{c}<|im_end|>"),
    "llama-3": (
        LLAMA3,
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
        lambda c: f"{c}<|eot_id|>",
    ),
    "system-in-user": (SYSTEM_IN_USER, ["<s>", "</s>"], "</s>", lambda c: f" {c} </s>"),
}

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a telescope."},
    {"role": "assistant", "content": "Hubble."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Kepler, I think.", "weight": 0},
    {"role": "user", "content": "Which did we talk about first?"},
    {"role": "assistant", "content": "Hubble."},
]


def shaped(shape: str) -> Any:
    template, special, eos, _ = SHAPES[shape]
    tokenizer = tiny_tokenizer(Path(os.environ["TUNELAB_MODEL_CACHE"]).parent)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": special})
        tokenizer.eos_token = eos
    if shape == "llama-3":
        tokenizer.bos_token = "<|begin_of_text|>"
    if shape == "system-in-user":
        tokenizer.bos_token = "<s>"
    tokenizer.chat_template = template
    return tokenizer


def trained_runs(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    runs: list[list[int]] = []
    previous = IGNORE
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            if previous == IGNORE:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_weighted_assistant_turn_and_its_end_token_are_trained_and_nothing_else(
    shape: str,
) -> None:
    tokenizer = shaped(shape)
    sample = encode_conversation(tokenizer, CONVERSATION, 512)
    turn = SHAPES[shape][3]
    assert trained_runs(tokenizer, sample.input_ids, sample.labels) == [
        turn("Hubble."),
        turn("Hubble."),
    ]
    # The ids are the whole rendering: what the model is given in serving, turn by turn.
    rendered = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in CONVERSATION], tokenize=False
    )
    decoded = tokenizer.decode(sample.input_ids)
    assert decoded == rendered or decoded == rendered + tokenizer.eos_token
    assert not sample.truncated


@pytest.mark.parametrize("shape", SHAPES)
def test_the_end_of_turn_token_is_among_the_trained_labels(shape: str) -> None:
    tokenizer = shaped(shape)
    sample = encode_conversation(tokenizer, CONVERSATION, 512)
    trained = [label for label in sample.labels if label != IGNORE]
    assert trained.count(tokenizer.eos_token_id) == 2


def test_a_template_that_rewrites_earlier_turns_is_refused_with_a_reason() -> None:
    tokenizer = shaped("built-in")
    tokenizer.chat_template = REWRITES_THE_PAST
    with pytest.raises(TemplateError, match="cannot be split per turn"):
        encode_conversation(tokenizer, CONVERSATION, 512)


def test_a_long_conversation_is_cut_at_a_turn_boundary_or_refused() -> None:
    tokenizer = shaped("chatml")
    whole = encode_conversation(tokenizer, CONVERSATION, 512)
    first_turn = encode_conversation(tokenizer, CONVERSATION[:3], 512)
    block = len(whole.input_ids) - 3
    cut = encode_conversation(tokenizer, CONVERSATION, block)
    # Turn two (weight 0) ends later than turn one: the cut keeps the last whole turn
    # that fits, so the conversation ends after an end-of-turn token.
    assert cut.truncated and len(cut.input_ids) <= block
    assert cut.input_ids[: len(first_turn.input_ids) - 1] == first_turn.input_ids[:-1]
    assert tokenizer.decode(cut.input_ids).endswith("<|im_end|>")
    with pytest.raises(ConversationTooLong):
        encode_conversation(tokenizer, CONVERSATION, block, "refuse")


def test_a_prompt_that_fills_the_block_before_the_first_trained_answer_is_refused() -> None:
    tokenizer = shaped("built-in")
    with pytest.raises(PromptTooLong, match="prompt alone"):
        encode_conversation(tokenizer, CONVERSATION, 8)
