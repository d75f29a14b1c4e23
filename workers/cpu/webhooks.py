"""Webhook delivery, signed per Standard Webhooks and retried with back-off."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook as Signer

from tunelab.db.tables import EventRecord, Webhook, WebhookDelivery
from tunelab.net import AddressRefused, check_scheme, pinned_client
from tunelab.settings import Settings
from tunelab.workers.context import current
from tunelab.workers.registry import command


class DeliveryFailed(Exception):
    """The receiver did not answer 2xx in time; Dramatiq retries with back-off."""


def signed_headers(secret: str, delivery_id: str, body: str, now: datetime) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Signer(secret).sign(delivery_id, now, body),
    }


def post(
    url: str, body: str, headers: dict[str, str], timeout_s: float, allow_private: bool
) -> dict[str, Any]:
    """One try; returns the attempt's log entry."""
    started = time.perf_counter()
    attempt: dict[str, Any] = {"at": datetime.now(UTC).isoformat()}
    try:
        check_scheme(url)
        # Its own resolution, checked on the connection: DNS may differ since registration.
        with pinned_client(allow_private, timeout_s) as client:
            response = client.post(url, content=body, headers=headers)
        attempt["status_code"] = response.status_code
        attempt["ok"] = response.is_success
    except (httpx.HTTPError, AddressRefused) as exc:
        attempt["error"] = f"{type(exc).__name__}: {exc}"
        attempt["ok"] = False
    attempt["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return attempt


def _retries(settings: Settings) -> dict[str, int]:
    """The actor's retry options; the status logic below reads the same setting, so the
    two cannot disagree."""
    return {
        "max_retries": settings.webhook_max_retries,
        "min_backoff": settings.webhook_min_backoff_ms,
        "max_backoff": settings.webhook_max_backoff_ms,
    }


@command("cpu", options_from=_retries)
def deliver_webhook(delivery_id: str) -> None:
    ctx = current()
    with ctx.db.session() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status == "delivered":
            return
        hook = session.get_one(Webhook, delivery.webhook_id)
        record = session.query(EventRecord).filter_by(id=delivery.event_id).one()
        url, secret, body = hook.url, hook.secret, json.dumps(record.envelope())
    attempt = post(
        url,
        body,
        signed_headers(secret, delivery_id, body, datetime.now(UTC)),
        ctx.settings.webhook_timeout_s,
        ctx.settings.webhook_allow_private,
    )
    with ctx.db.session() as session:
        delivery = session.get_one(WebhookDelivery, delivery_id)
        delivery.attempts = [*delivery.attempts, attempt]
        if attempt["ok"]:
            delivery.status = "delivered"
        elif len(delivery.attempts) > ctx.settings.webhook_max_retries:
            delivery.status = "failed"
        else:
            delivery.status = "retrying"
    if not attempt["ok"]:
        raise DeliveryFailed(f"delivery {delivery_id} to {url}: {attempt}")
