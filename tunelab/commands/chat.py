"""`tunelab chat SERVICE` (a streaming REPL) and `tunelab compare A B C`."""

from __future__ import annotations

import json
from typing import Any

import httpx
from rich.table import Table
from rich.text import Text

from tunelab.client import ApiError, Client
from tunelab.client.calls import server_events
from tunelab.commands.show import console, errors

HELP = "/system TEXT sets the system prompt, /reset forgets the conversation, /exit leaves."


def _lines(prompt: str) -> Any:
    while True:
        try:
            yield input(prompt)
        except EOFError:
            return


def repl(client: Client, service: str, max_tokens: int, temperature: float) -> int:
    console.print(f"chatting with {service}: {HELP}")
    system: str | None = None
    history: list[dict[str, str]] = []
    for line in _lines("you> "):
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = []
            console.print("(the conversation is forgotten)")
            continue
        if text.startswith("/system"):
            system = text.removeprefix("/system").strip() or None
            history = []
            console.print(f"(system prompt: {system or 'none'}; a new conversation)")
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history

        def read(response: httpx.Response) -> str:
            answer = []
            for event in server_events(response.iter_lines()):
                if event.data == "[DONE]":
                    break
                chunk = json.loads(event.data)
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                for choice in chunk.get("choices", []):
                    piece = choice.get("delta", {}).get("content") or ""
                    answer.append(piece)
                    console.print(piece, end="", markup=False, highlight=False)
            console.print()
            return "".join(answer)

        console.print(f"{service}> ", end="", markup=False)
        try:
            reply = client.chat.stream(
                service, messages, read, max_tokens=max_tokens, temperature=temperature
            )
        except (ApiError, RuntimeError) as exc:
            # One failed turn is not the end of the conversation.
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            errors.print(f"(no answer: {message})", markup=False)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
    return 0


def compare(
    client: Client, services: list[str], message: str | None, max_tokens: int, output: str
) -> int:
    """Each service's answer to the message (or to each line typed)."""
    for text in [message] if message else _lines("you> "):
        if not text or not text.strip():
            continue
        body = client.chat.compare(
            {
                "services": services,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": max_tokens,
            }
        )
        if output == "json":
            console.print_json(json.dumps(body))
            continue
        table = Table("SERVICE", "ANSWER", "TOKENS/S", "LATENCY MS")
        for result in body["results"]:
            if "error" in result:
                error = Text(result["error"]["message"], style="red")
                table.add_row(result["service"], error, "-", "-")
            else:
                table.add_row(
                    result["service"],
                    Text(result["content"]),
                    f"{result['tokens_per_second']:.1f}",
                    f"{result['latency_ms']:.0f}",
                )
        console.print(table)
    return 0
