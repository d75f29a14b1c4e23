"""A chat rendered into the prompt its model was trained on, with the model's tokenizer
files and jinja2 only: no torch and no weights, so the API process can do it for every
chat before the chat reaches a model server.

Rendering follows transformers' `apply_chat_template` (a sandboxed jinja2 environment
with the same filters and globals, the special tokens as variables), so a prompt here is
the prompt training saw; tests check the two against each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Where a model's config.json gives its context length, in the order vLLM looks."""


class PromptError(ValueError):
    """The chat cannot be rendered (the template refused it, or the files are missing)."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which no chat template wants.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, which some templates wrap assistant
    turns in (for transformers' assistant masks): rendered as its body."""

    tags = {"generation"}  # noqa: RUF012  (jinja2 declares it so)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int


class PromptKit:
    """What a model's chats are rendered, counted and stopped with."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str,
        specials: dict[str, str],
        context: int,
        stops: tuple[str, ...],
    ) -> None:
        self.tokenizer, self.specials, self.context = tokenizer, specials, context
        self.template = compile_template(template)
        self.stops = stops
        """Strings that end an answer: the model's end-of-turn tokens."""

    def render(self, messages: list[dict[str, str]]) -> Prompt:
        try:
            text = self.template.render(
                messages=messages, add_generation_prompt=True, **self.specials
            )
        except jinja2.exceptions.TemplateError as exc:
            raise PromptError(f"the model's chat template refused the chat: {exc}") from None
        # The template holds every special token it wants: none are added here, nor by
        # the model server (add_special_tokens is off there too).
        return Prompt(text, len(self.tokenizer.encode(text, add_special_tokens=False).ids))


def _special(value: Any) -> str | None:
    if isinstance(value, dict):  # an AddedToken as transformers serialises it
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text("utf-8"))
    return data if isinstance(data, dict) else {}


def context_length(config: dict[str, Any]) -> int | None:
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_prompt_kit(
    folder: Path,
    chat_template: str | None = None,
    stop_tokens: tuple[str, ...] = (),
    context_override: int | None = None,
) -> PromptKit:
    """The kit of the model whose tokenizer files are in `folder` (see model_files).

    `chat_template` (the one saved with a fine-tuned model) wins over the folder's own.
    Raises PromptError when the folder has no tokenizer.json, template or context.
    """
    if not (folder / "tokenizer.json").exists():
        raise PromptError(
            "the model has no tokenizer.json (a fast tokenizer); save its tokenizer with "
            "transformers' save_pretrained to make one"
        )
    config = _read_json(folder / "tokenizer_config.json")
    legacy = _read_json(folder / "special_tokens_map.json")
    specials = {}
    for name in SPECIAL_TOKEN_NAMES:
        token = _special(config.get(name)) or _special(legacy.get(name))
        if token is not None:
            specials[name] = token
    template = chat_template or _template_of(folder, config)
    if template is None:
        raise PromptError("the model has no chat template")
    context = context_override or context_length(_read_json(folder / "config.json"))
    if context is None:
        raise PromptError("the model's config.json gives no context length")
    eos = specials.get("eos_token")
    stops = tuple(dict.fromkeys([*stop_tokens, *([eos] if eos else [])]))
    return PromptKit(
        Tokenizer.from_file(str(folder / "tokenizer.json")), template, specials, context, stops
    )


def _template_of(folder: Path, config: dict[str, Any]) -> str | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text("utf-8")
    template = config.get("chat_template") or _read_json(folder / "chat_template.json").get(
        "chat_template"
    )
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None
