"""Dataset lifecycle events."""

from __future__ import annotations

from typing import Any, Literal

from tunelab.events.envelope import Event, Payload


class DatasetRef(Payload):
    dataset_id: str
    name: str


class DatasetUploadedData(DatasetRef):
    source_uri: str
    """Where the raw file waits for the CPU worker (object store or remote address)."""
    feature_mapping: dict[str, str]


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
