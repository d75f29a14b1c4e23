"""`POST /triggers/s3`: an object landed under `uploads/`; start ingesting it.

Accepts an S3 event notification (AWS's JSON, MinIO's webhook form) or the same
wrapped in an SNS HTTP notification, and confirms SNS subscriptions. Authenticated by
a shared secret (TUNELAB_S3_TRIGGER_SECRET) in `Authorization: Bearer ...` or the
`secret` query parameter (SNS cannot send headers).
"""

from __future__ import annotations

import hmac
from typing import Any, TypeVar
from urllib.parse import unquote_plus

import httpx
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import update
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.db.tables import Dataset
from tunelab.errors import BadRequest, NotFound, Unauthorized
from tunelab.functions.boundary import parse_json
from tunelab.functions.datasets import uploaded_event
from tunelab.functions.http import parse, respond
from tunelab.net import AddressRefused, check_scheme, pinned_client

UPLOAD_PREFIX = "uploads/"
M = TypeVar("M", bound=BaseModel)


def _authorise(request: Request) -> None:
    secret = request.app.state.settings.s3_trigger_secret
    if not secret:
        raise NotFound("The S3 trigger is off; set TUNELAB_S3_TRIGGER_SECRET to enable it.")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given if scheme.lower() == "bearer" else request.query_params.get("secret", "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise Unauthorized("The S3 trigger secret is missing or wrong.")


class _Shape(BaseModel):
    """The parts of AWS's, MinIO's and SNS's JSON tunelab reads; the rest is ignored."""

    model_config = ConfigDict(extra="ignore")


class S3Bucket(_Shape):
    name: str = ""


class S3Object(_Shape):
    key: str = ""


class S3Entity(_Shape):
    bucket: S3Bucket = Field(default_factory=S3Bucket)
    object: S3Object = Field(default_factory=S3Object)


class S3Record(_Shape):
    eventName: str = ""
    s3: S3Entity = Field(default_factory=S3Entity)


class S3Notification(_Shape):
    Records: list[S3Record] | None = None
    Event: str | None = None


class SnsMessage(_Shape):
    Type: str | None = None
    Message: str | None = None
    SubscribeURL: str = ""


def _shaped(model: type[M], body: Any, what: str) -> M:
    """A notification that is not one is malformed (400), not a request to refuse."""
    return parse(model, body, what, refusal=BadRequest)


def records_of(body: Any) -> list[S3Record]:
    """The S3 event records in an AWS, MinIO or SNS-wrapped notification."""
    envelope = _shaped(SnsMessage, body, "notification")
    if envelope.Type == "Notification":
        message = envelope.Message
        if message is None:
            raise BadRequest("The SNS notification has no Message.")
        body = parse_json(message, "SNS notification's Message")
    notification = _shaped(S3Notification, body, "notification")
    if notification.Records is None:
        if notification.Event == "s3:TestEvent":
            return []
        raise BadRequest("The body holds no S3 event 'Records'.")
    return notification.Records


def _created_key(record: S3Record) -> tuple[str, str] | None:
    if not record.eventName.removeprefix("s3:").startswith("ObjectCreated"):
        return None
    key = unquote_plus(record.s3.object.key)
    return (record.s3.bucket.name, key) if key.startswith(UPLOAD_PREFIX) else None


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


def _confirm(url: str, allow_private: bool) -> bool:
    """Visit the SNS SubscribeURL, connecting only where it was checked to lead."""
    try:
        check_scheme(url)
        with pinned_client(allow_private, timeout=10) as client:
            return client.get(url).is_success
    except AddressRefused as exc:
        raise BadRequest(f"SubscribeURL refused: {exc}") from None
    except httpx.HTTPError as exc:
        raise BadRequest(f"Confirming the subscription failed: {exc}.") from None


async def s3_trigger(request: Request) -> JSONResponse:
    _authorise(request)
    body = parse_json(await request.body())
    envelope = _shaped(SnsMessage, body, "notification")
    if envelope.Type == "SubscriptionConfirmation":
        url = envelope.SubscribeURL
        settings = request.app.state.settings
        confirmed = await run_in_threadpool(_confirm, url, settings.allow_private_sources)
        return respond({"confirmed": confirmed})
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
