"""The gateway renders chats with the tokenizer files and jinja2 alone: the prompt and its
token count must be exactly what transformers (which training uses) makes of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tunelab.serving.model_files import prompt_folder
from tunelab.serving.prompts import PromptError, load_prompt_kit
from tunelab.settings import Settings
from tunelab.store.local import LocalStore
from tunelab.tokenizer import CHAT_TEMPLATE, tiny_tokenizer_path

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Llama-2's shape: the system prompt goes inside the first user turn; a bad order raises.
SYSTEM_IN_USER = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = false %}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Roles must alternate user/assistant/user/assistant') }}{% endif %}"
    "{% if loop.index0 == 0 and system %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + content | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)
GENERATION_TAGS = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | tojson }}{% endgeneration %}"
    "{% else %}{{ message['role'] }}: {{ message['content'] }}\\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
TEMPLATES = {
    "built-in": CHAT_TEMPLATE,
    "chatml": CHATML,
    "llama-3": LLAMA3,
    "system-in-user": SYSTEM_IN_USER,
    "generation-tags": GENERATION_TAGS,
}
CHAT = [
    {"role": "system", "content": "You answer briefly. 简短回答。"},
    {"role": "user", "content": "Which telescope did we talk about?"},
    {"role": "assistant", "content": 'The "Hubble" <b>one</b>.'},
    {"role": "user", "content": "  And who launched it? 谁发射的？ "},
]


def saved_tokenizer(tmp_path: Path, template: str) -> tuple[PreTrainedTokenizerFast, Path]:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_tokenizer_path(tmp_path / "data")),
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
    )
    tokenizer.chat_template = template
    folder = tmp_path / "model"
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    return tokenizer, folder


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_chat_renders_and_counts_as_transformers_renders_it(name: str, tmp_path: Path) -> None:
    tokenizer, folder = saved_tokenizer(tmp_path, TEMPLATES[name])
    kit = load_prompt_kit(folder)
    prompt = kit.render(CHAT)
    expected = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt.text == expected
    assert prompt.tokens == len(tokenizer(expected, add_special_tokens=False)["input_ids"])
    assert kit.context == 2048 and kit.stops == ("<|eos|>",)


def test_a_saved_template_wins_and_a_template_refusal_is_a_prompt_error(tmp_path: Path) -> None:
    _, folder = saved_tokenizer(tmp_path, CHATML)
    kit = load_prompt_kit(folder, chat_template=SYSTEM_IN_USER, stop_tokens=("</s>",))
    assert kit.stops == ("</s>", "<|eos|>")
    with pytest.raises(PromptError, match="Roles must alternate"):
        kit.render([{"role": "assistant", "content": "first"}])


def test_a_folder_without_a_fast_tokenizer_or_template_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=r"tokenizer\.json"):
        load_prompt_kit(tmp_path)
    _, folder = saved_tokenizer(tmp_path, CHATML)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(PromptError, match="no chat template"):
        load_prompt_kit(folder)


def test_the_built_in_models_prompt_files_are_made_without_torch(tmp_path: Path) -> None:
    """The API process has no torch: the built-in model's files come from its tokenizer,
    and render as the tokenizer the model was saved with does."""
    settings = Settings(data_dir=tmp_path / "data", model_cache=tmp_path / "cache")
    script = (
        "import sys\n"
        "from tunelab.serving.model_files import prompt_folder\n"
        "from tunelab.serving.prompts import load_prompt_kit\n"
        "from tunelab.settings import Settings\n"
        "from tunelab.store.local import LocalStore\n"
        f"settings = Settings(data_dir={str(tmp_path / 'data')!r}, "
        f"model_cache={str(tmp_path / 'cache')!r})\n"
        "folder = prompt_folder(settings, LocalStore(settings.data_dir), 'builtin://tiny-llama')\n"
        "load_prompt_kit(folder).render([{'role': 'user', 'content': 'hi'}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    folder = prompt_folder(settings, LocalStore(tmp_path / "objects"), "builtin://tiny-llama")
    tokenizer, _ = saved_tokenizer(tmp_path, CHAT_TEMPLATE)
    chat = CHAT[1:2]
    expected = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    kit = load_prompt_kit(folder)
    assert kit.render(chat).text == expected and kit.context == 1024
