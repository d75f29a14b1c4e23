"""Helpers for tests that run actors through the StubBroker."""

from __future__ import annotations

from typing import Any

from tunelab.context import Context


def drain(ctx: Context, *, fail_fast: bool = True) -> None:
    """Wait until the queues are empty; re-raises an actor's failure (any message dead
    on a queue so far) when `fail_fast`."""
    broker: Any = ctx.bus.broker
    for queue in (ctx.settings.cpu_queue, ctx.settings.gpu_queue, ctx.settings.train_queue):
        broker.join(queue, fail_fast=fail_fast)
