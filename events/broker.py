"""The Dramatiq broker on Redis, built the same way in every process."""

from __future__ import annotations

from collections.abc import Iterable

from dramatiq import Middleware
from dramatiq.brokers.redis import RedisBroker

from tunelab.settings import Settings, SettingsError


def build_broker(settings: Settings, middleware: Iterable[Middleware] = ()) -> RedisBroker:
    if not settings.redis_url:
        raise SettingsError(
            "TUNELAB_REDIS_URL is required here; only `tunelab up` starts a Redis of its own"
        )
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url, heartbeat_timeout=settings.broker_heartbeat_timeout_ms
    )
    for extra in middleware:
        broker.add_middleware(extra)
    return broker


def queue_name(settings: Settings, worker: str) -> str:
    return {
        "cpu": settings.cpu_queue,
        "gpu": settings.gpu_queue,
        "train": settings.train_queue,
    }[worker]
