"""Model repository events."""

from __future__ import annotations

from typing import Literal

from tunelab.events.envelope import Event, Payload


class ModelRegisteredData(Payload):
    model_id: str
    name: str
    kind: Literal["base", "finetuned"]
    base_model: str | None = None
    experiment: str | None = None
    task: str | None = None


class ModelRegistered(Event):
    type: Literal["model.registered"] = "model.registered"
    data: ModelRegisteredData


class ModelRef(Payload):
    model_id: str
    name: str
    kind: Literal["base", "finetuned"]


class ModelDeleted(Event):
    type: Literal["model.deleted"] = "model.deleted"
    data: ModelRef


class ModelMergeRequestedData(Payload):
    model_id: str
    """The merged model's row, `merging` until it is made."""
    name: str
    source_id: str
    """The LoRA model whose adapter is merged into its base."""
    source: str


class ModelMergeRequested(Event):
    type: Literal["model.merge_requested"] = "model.merge_requested"
    data: ModelMergeRequestedData
