"""`POST /triggers/s3`: an object landed under `uploads/`; start ingesting it.

Accepts an S3 event notification (AWS's JSON, MinIO's webhook form) or the same
wrapped in an SNS HTTP notification, and confirms SNS subscriptions. Authenticated by
a shared secret (TUNELAB_S3_TRIGGER_SECRET) in `Authorization: Bearer ...` or the
`secret` query parameter (SNS cannot send headers).
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import unquote_plus

import httpx
from sqlalchemy import update
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.models import Dataset
from tunelab.errors import BadRequest, NotFound, Unauthorized
from tunelab.functions.datasets import uploaded_event
from tunelab.functions.http import respond
from tunelab.workers.cpu.sources import SourceError, check_address

UPLOAD_PREFIX = "uploads/"


def _authorise(request: Request) -> None:
    secret = request.app.state.settings.s3_trigger_secret
    if not secret:
        raise NotFound("The S3 trigger is off; set TUNELAB_S3_TRIGGER_SECRET to enable it.")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given if scheme.lower() == "bearer" else request.query_params.get("secret", "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise Unauthorized("The S3 trigger secret is missing or wrong.")


def records_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The S3 event records in an AWS, MinIO or SNS-wrapped notification."""
    if body.get("Type") == "Notification":
        try:
            body = json.loads(body.get("Message", ""))
        except json.JSONDecodeError:
            raise BadRequest("The SNS notification's Message is not JSON.") from None
    records = body.get("Records")
    if not isinstance(records, list):
        if body.get("Event") == "s3:TestEvent":
            return []
        raise BadRequest("The body holds no S3 event 'Records'.")
    return [r for r in records if isinstance(r, dict)]


def _created_key(record: dict[str, Any]) -> tuple[str, str] | None:
    if not str(record.get("eventName", "")).removeprefix("s3:").startswith("ObjectCreated"):
        return None
    s3 = record.get("s3") or {}
    bucket = (s3.get("bucket") or {}).get("name", "")
    key = unquote_plus((s3.get("object") or {}).get("key", ""))
    return (bucket, key) if key.startswith(UPLOAD_PREFIX) else None


def start_ingestion(state: Any, bucket: str, key: str) -> str:
    """Announce the dataset waiting for this object; a repeat notification does nothing."""
    parts = key.split("/")
    if len(parts) < 4 or getattr(state.store, "bucket", bucket) != bucket:
        return "ignored: not a registered upload"
    dataset_id = parts[2]
    with state.db.session() as session:
        # Only the first notification moves awaiting_upload -> pending.
        moved = session.execute(
            update(Dataset)
            .where(
                Dataset.id == dataset_id,
                Dataset.status == "awaiting_upload",
                Dataset.source["key"].as_string() == key,
            )
            .values(status="pending")
        ).rowcount
        dataset = session.get(Dataset, dataset_id)
        if not moved or dataset is None:
            return "ignored: already started or unknown"
        event = uploaded_event(dataset, {"train": state.store.uri(key)})
        send = state.bus.stage(session, event)
    try:
        send()
    except BaseException:
        # Undo, so that the notification's redelivery starts the ingestion again.
        with state.db.session() as session:
            session.execute(
                update(Dataset).where(Dataset.id == dataset_id).values(status="awaiting_upload")
            )
            state.bus.retract(session, event)
        raise
    return f"started: {dataset.name}"


def _check_subscribe_url(url: str, allow_private: bool) -> None:
    try:
        check_address(url, allow_private)
    except SourceError as exc:
        raise BadRequest(f"SubscribeURL refused: {exc.message}") from None


async def s3_trigger(request: Request) -> JSONResponse:
    _authorise(request)
    try:
        body = json.loads(await request.body())
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    if body.get("Type") == "SubscriptionConfirmation":
        url = str(body.get("SubscribeURL", ""))
        settings = request.app.state.settings
        await run_in_threadpool(_check_subscribe_url, url, settings.allow_private_sources)
        try:
            response = await run_in_threadpool(httpx.get, url, timeout=10)
        except httpx.HTTPError as exc:
            raise BadRequest(f"Confirming the subscription failed: {exc}.") from None
        return respond({"confirmed": response.is_success})
    results = []
    for record in records_of(body):
        target = _created_key(record)
        if target is not None:
            results.append(
                {
                    "key": target[1],
                    "result": await run_in_threadpool(start_ingestion, request.app.state, *target),
                }
            )
    return respond({"records": results})
