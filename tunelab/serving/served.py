"""What a service serves: the model its server runs, its own adapter (for a LoRA
service), the chat template and stop tokens its answers are prompted with, and the name
the server knows it by."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.db.tables import Model

SERVED_NAME = "base"
"""What a server calls its own model; adapters are called by their service's id."""


def adapter_name(service_id: str) -> str:
    return f"svc-{service_id}"


@dataclass(frozen=True)
class Served:
    server_model_uri: str
    """The model a server runs: the base model of a LoRA model, else the model itself."""
    adapter_uri: str | None
    prompt_uri: str
    """Where the tokenizer and chat template are: a fine-tuned model saves its own."""
    chat_template: str | None
    stop_tokens: tuple[str, ...]

    def target(self, service_id: str) -> str:
        """The model name a request for the service asks its server for."""
        return adapter_name(service_id) if self.adapter_uri else SERVED_NAME


def served(model: Model) -> Served:
    spec = model.spec or {}
    if model.kind == "finetuned" and spec.get("adapter"):
        base_uri = spec["base_model_uri"]
        adapter: str | None = model.uri
    else:
        base_uri, adapter = model.uri, None
    return Served(
        server_model_uri=base_uri,
        adapter_uri=adapter,
        prompt_uri=model.uri,
        chat_template=spec.get("chat_template"),
        stop_tokens=tuple(spec.get("stop_tokens") or ()),
    )
