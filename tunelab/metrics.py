"""Prometheus metrics shared by the API and the workers.

When PROMETHEUS_MULTIPROC_DIR is set (as `tunelab up` does), every process writes its
samples there and `/metrics` on the API adds them up, so the workers' consumption
counts show beside the API's own.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

HTTP_REQUESTS = Counter(
    "tunelab_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "tunelab_http_request_duration_seconds", "HTTP request latency", ["method", "route"]
)
EVENTS_PUBLISHED = Counter("tunelab_events_published_total", "Events published", ["type"])
EVENTS_CONSUMED = Counter(
    "tunelab_events_consumed_total", "Messages handled by actors", ["actor", "outcome"]
)


def render(extra: CollectorRegistry | None = None) -> bytes:
    """The exposition text of this process, or of all processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    text = generate_latest(registry)
    if extra is not None:
        text += generate_latest(extra)
    return text
