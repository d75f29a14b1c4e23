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

# Traffic of the model services: per service, never per prompt or request id.
CHAT_REQUESTS = Counter(
    "tunelab_chat_requests_total", "Chats answered", ["workspace", "service", "outcome"]
)
CHAT_TOKENS = Counter(
    "tunelab_chat_tokens_total", "Tokens of chats", ["workspace", "service", "kind"]
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CHAT_TTFT = Histogram(
    "tunelab_chat_time_to_first_token_seconds",
    "Time to the first token of streamed chats",
    ["workspace", "service"],
    buckets=LATENCY_BUCKETS,
)
CHAT_DURATION = Histogram(
    "tunelab_chat_duration_seconds",
    "Time to answer a chat",
    ["workspace", "service"],
    buckets=LATENCY_BUCKETS,
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
