"""Operations: liveness, readiness of every dependency, Prometheus metrics."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tunelab.errors import NotFound, Unauthorized
from tunelab.metrics import render
from tunelab.serving_rules import engine_of


def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, str] = {}
    probes = {
        "broker": lambda: state.broker.client.ping(),
        "database": state.db.ping,
        "object_store": state.store.ping,
    }
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; say which and why
            checks[name] = f"{type(exc).__name__}: {exc}"[:300]
    ready = all(v == "ok" for v in checks.values())
    engine = engine_of(state.settings)
    serving = {
        "engine": engine,
        "note": "vLLM model servers"
        if engine == "vllm"
        else "vLLM is not installed here: models are served by the in-process transformers "
        "fallback, one request at a time",
    }
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks, "serving": serving},
        status_code=200 if ready else 503,
    )


class QueueDepth(Collector):
    """Reads Dramatiq's Redis keys at scrape time: waiting, delayed and dead messages."""

    def __init__(self, redis: Any, queues: list[str]) -> None:
        self.redis = redis
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "tunelab_queue_depth", "Messages in a queue", labels=["queue", "state"]
        )
        pipe = self.redis.pipeline()
        for queue in self.queues:
            pipe.llen(f"dramatiq:{queue}")
            pipe.llen(f"dramatiq:{queue}.DQ")
            pipe.zcard(f"dramatiq:{queue}.XQ")
        counts = iter(pipe.execute())
        for queue in self.queues:
            for state in ("waiting", "delayed", "dead"):
                gauge.add_metric([queue, state], next(counts))
        yield gauge


def queue_registry(redis: Any, queues: list[str]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueDepth(redis, queues))
    return registry


def metrics(request: Request) -> Response:
    """Prometheus text, for the operator's scraper only: every workspace's traffic is in
    it, so it takes TUNELAB_METRICS_TOKEN, never a workspace's token."""
    expected = request.app.state.settings.metrics_token
    if not expected:
        raise NotFound("Metrics are off: set TUNELAB_METRICS_TOKEN and scrape with it.")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <TUNELAB_METRICS_TOKEN>'.")
    return Response(
        render(request.app.state.queue_metrics),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
