"""Dataset lifecycle events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelab.events.envelope import Event, Payload


class DatasetRef(Payload):
    dataset_id: str
    name: str


class PluginSource(Payload):
    name: str
    parameters: dict[str, Any]


class ChatsSource(Payload):
    """Stored chats (and votes) that become the dataset's rows (see functions'
    ChatsSourceSpec)."""

    kind: Literal["preference", "sft"]
    service: str | None = None
    since: str | None = None
    until: str | None = None


class DatasetUploadedData(DatasetRef):
    sources: dict[str, str]
    """Split (train, validate, test) to the file's URI: in the platform's store, or a
    remote http(s)/s3 address the CPU worker fetches."""
    plugin: PluginSource | None = None
    chats: ChatsSource | None = None
    formats: dict[str, str] = Field(default_factory=dict)
    """Split to its file's format: csv, openai, sharegpt, alpaca, or json (its records'
    keys tell which); a split not named is told by its first bytes."""
    feature_mapping: dict[str, str]
    language: str = "en"
    size_category: str | None = None


class DatasetUploaded(Event):
    type: Literal["dataset.uploaded"] = "dataset.uploaded"
    data: DatasetUploadedData


class DatasetValidatedData(DatasetRef):
    stats: dict[str, Any]
    files: dict[str, str]


class DatasetValidated(Event):
    type: Literal["dataset.validated"] = "dataset.validated"
    data: DatasetValidatedData


class DatasetFailedData(DatasetRef):
    error: dict[str, Any]


class DatasetFailed(Event):
    type: Literal["dataset.failed"] = "dataset.failed"
    data: DatasetFailedData
