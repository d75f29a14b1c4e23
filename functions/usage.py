"""`GET /api/v1/usage?service=&from=&to=`: the workspace's model-service traffic per
service and hour, as the gateway metered it (written every few seconds)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.tables import UsageRecord
from tunelab.errors import Invalid
from tunelab.functions.http import respond, workspace_id
from tunelab.serving.usage import quantile
from tunelab.times import iso


def _time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        message = f"{raw!r} is not an RFC 3339 time (e.g. 2026-12-01T10:00:00Z)"
        raise Invalid(f"{name}: {message}.", [{"field": name, "message": message}]) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _figures(histogram: dict[str, Any]) -> dict[str, Any]:
    count = histogram["count"]
    return {
        "count": count,
        "mean": round(histogram["sum"] / count, 2) if count else None,
        "p50": quantile(histogram, 0.5),
        "p90": quantile(histogram, 0.9),
        "p99": quantile(histogram, 0.99),
        "buckets": histogram["buckets"],
    }


def to_json(row: UsageRecord) -> dict[str, Any]:
    return {
        "service": row.service,
        "hour": iso(row.hour),
        "requests": row.requests,
        "errors": row.errors,
        "cancelled": row.cancelled,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "ttft_ms": _figures(row.ttft_ms),
        "latency_ms": _figures(row.latency_ms),
    }


def get_usage(request: Request) -> JSONResponse:
    """Newest hour first; `from`/`to` bound the hours (inclusive), `service` the name."""
    start, end = _time(request, "from"), _time(request, "to")
    query = select(UsageRecord).where(UsageRecord.workspace_id == workspace_id(request))
    if request.query_params.get("service"):
        query = query.where(UsageRecord.service == request.query_params["service"])
    if start is not None:
        query = query.where(UsageRecord.hour >= start.replace(minute=0, second=0, microsecond=0))
    if end is not None:
        query = query.where(UsageRecord.hour <= end)
    with request.app.state.db.session() as session:
        rows = session.scalars(query.order_by(UsageRecord.hour.desc(), UsageRecord.service))
        return respond({"items": [to_json(r) for r in rows.all()[:5000]]})
