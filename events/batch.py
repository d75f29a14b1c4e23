"""Batch events: a file of chat requests accepted, and its outcome."""

from __future__ import annotations

from typing import Literal

from tunelab.events.envelope import Event, Payload


class BatchRef(Payload):
    batch_id: str


class BatchCounts(BatchRef):
    total: int
    completed: int
    failed: int


class BatchCreated(Event):
    type: Literal["batch.created"] = "batch.created"
    data: BatchRef


class BatchCompleted(Event):
    type: Literal["batch.completed"] = "batch.completed"
    data: BatchCounts


class BatchFailedData(BatchRef):
    error: dict[str, str]


class BatchFailed(Event):
    type: Literal["batch.failed"] = "batch.failed"
    data: BatchFailedData
