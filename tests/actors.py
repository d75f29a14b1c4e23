"""Helpers for tests that run actors through the StubBroker."""

from __future__ import annotations

from typing import Any

from tunelab.workers import context


def drain(ctx: context.WorkerContext) -> None:
    """Wait until both queues are empty; re-raises an actor's failure."""
    broker: Any = ctx.bus.broker
    for queue in (ctx.settings.cpu_queue, ctx.settings.gpu_queue, ctx.settings.train_queue):
        broker.join(queue, fail_fast=True)
