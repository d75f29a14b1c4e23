"""Turning a question/answer pair into training tokens with the model's chat template.

Loss is on the answer only: the prompt (system, question and the assistant header the
template adds) is rendered with `add_generation_prompt=True`, tokenised, and masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100
"""Label of a token that takes no part in the loss (PyTorch's cross-entropy default)."""


class TemplateError(ValueError):
    """The model's chat template cannot be split into prompt and answer."""


class PromptTooLong(TemplateError):
    """A prompt leaves no room for its answer within the block size."""


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def messages_for(question: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": question}]


def render_prompt(tokenizer: Any, question: str, system: str | None = None) -> str:
    """The text a model is given to answer `question`: what serving sends too."""
    text: str = tokenizer.apply_chat_template(
        messages_for(question, system), tokenize=False, add_generation_prompt=True
    )
    return text


def encode_pair(
    tokenizer: Any, question: str, answer: str, block_size: int, system: str | None = None
) -> Sample:
    """Tokens and labels of one pair; the answer's tail is cut to fit `block_size`.

    Raises TemplateError when the template renders the conversation so that the prompt
    is not its prefix (then the answer cannot be located), PromptTooLong when the prompt
    alone leaves no room for an answer token.
    """
    prompt = render_prompt(tokenizer, question, system)
    full = tokenizer.apply_chat_template(
        [*messages_for(question, system), {"role": "assistant", "content": answer}],
        tokenize=False,
    )
    if not full.startswith(prompt):
        raise TemplateError("the chat template does not render the prompt as a prefix")
    completion = full[len(prompt) :]
    # Tokenising the two parts apart keeps the boundary exact; the template already
    # holds whatever special tokens it wants, so none are added here.
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not answer_ids or answer_ids[-1] != tokenizer.eos_token_id:
        answer_ids = [*answer_ids, tokenizer.eos_token_id]
    room = block_size - len(prompt_ids)
    if room < 1:
        raise PromptTooLong(f"a prompt alone is {len(prompt_ids)} tokens, over {block_size}")
    truncated = len(answer_ids) > room
    answer_ids = answer_ids[:room]
    return Sample(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE] * len(prompt_ids) + answer_ids,
        truncated=truncated,
    )
