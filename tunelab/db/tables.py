"""Tables for every resource of the public API.

Rows that later issues fill in (experiments, tasks, models, services) already have
their identity, workspace, status and a JSON `spec`, so those issues add behaviour
through migrations that extend rather than reshape.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tunelab.times import iso

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


def _id() -> Mapped[str]:
    return mapped_column(String(32), primary_key=True, default=new_id)


def _workspace() -> Mapped[str]:
    return mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow)


class Workspace(Base):
    __tablename__ = "workspaces"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = _created()


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    name: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(16), default="admin")
    """viewer, member or admin (tunelab.auth.ROLES)."""
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 of the token: tokens are long random strings, so a plain hash suffices."""
    prefix: Mapped[str] = mapped_column(String(16))
    """The token's first characters, to tell tokens apart in listings."""
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    name: Mapped[str] = mapped_column(String(63))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    """The user's metadata (labels, language, cluster, namespace, license, ...)."""
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    warnings: Mapped[list[Any] | None] = mapped_column(JSON)
    files: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Object-store URIs of the validated files, by split."""
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ParameterGroup(Base):
    __tablename__ = "parameter_groups"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    name: Mapped[str] = mapped_column(String(63))
    cluster: Mapped[str] = mapped_column(String(63))
    namespace: Mapped[str] = mapped_column(String(63))
    finetune_type: Mapped[str] = mapped_column(String(16), default="SFT")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created()


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    name: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    best_task: Mapped[str | None] = mapped_column(String(63))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FineTuningJob(Base):
    """An experiment asked for through OpenAI's fine-tuning API (`/v1/fine_tuning/jobs`):
    its one task trains what the request said, and this row keeps what OpenAI's job
    object shows (files, suffix, seed, metadata, hyperparameters as given)."""

    __tablename__ = "fine_tuning_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """`ftjob-` and 24 hex digits; also the experiment's and its parameter group's name."""
    workspace_id: Mapped[str] = _workspace()
    experiment_id: Mapped[str | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), unique=True
    )
    """None while the job waits for its files' checks (`spec.state`: validating_files),
    or when it ended before it had an experiment (failed, cancelled)."""
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(63))
    position: Mapped[int] = mapped_column(Integer, default=0)
    """Order within the experiment: with the experiment's time, the scheduling order."""
    cluster: Mapped[str] = mapped_column(String(63), default="local", index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    score: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model: Mapped[str | None] = mapped_column(String(63))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created()


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str | None] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    """None for built-in base models, which every workspace sees."""
    name: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    uri: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = _created()
    status: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready")
    """ready; merging (a merged model being made), or failed (with `error`)."""
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Service(Base):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    name: Mapped[str] = mapped_column(String(63))
    model: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="deploying")
    endpoint: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created()
    server_id: Mapped[str | None] = mapped_column(
        ForeignKey("model_servers.id", ondelete="SET NULL"), index=True
    )
    """The model server the service lives on, once placed: the adapter registry is the
    set of services on a server, from which a restarted server is loaded again."""
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelServer(Base):
    """One inference server: a base model shared by its LoRA services, or a full model."""

    __tablename__ = "model_servers"
    id: Mapped[str] = _id()
    model_uri: Mapped[str] = mapped_column(Text, index=True)
    """The base (or full fine-tuned) model the server runs."""
    shared: Mapped[bool] = mapped_column(default=True)
    """Whether LoRA services and the base model's own services may join it."""
    engine: Mapped[str] = mapped_column(String(16))
    namespace: Mapped[str] = mapped_column(String(63), default="default", server_default="default")
    """Where the server runs (a Kubernetes namespace); only services of it join."""
    status: Mapped[str] = mapped_column(String(16), default="starting")
    """starting (no requests yet: a restart reloads its adapters first), ready."""
    url: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created()


class Batch(Base):
    """A file of chat requests in OpenAI's batch format, answered by the workers."""

    __tablename__ = "batches"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = _workspace()
    status: Mapped[str] = mapped_column(String(16), default="validating")
    """validating → in_progress → completed | failed."""
    input_key: Mapped[str] = mapped_column(Text)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """total, completed, failed: requests so far."""
    output_key: Mapped[str | None] = mapped_column(Text)
    error_key: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = _created()
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EventRecord(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    """Monotonic cursor for `?after=` and the event stream."""
    id: Mapped[str] = mapped_column(String(64), unique=True)
    workspace_id: Mapped[str | None] = _workspace()
    type: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str | None] = mapped_column(String(256))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    def envelope(self) -> dict[str, Any]:
        """The event as CloudEvents JSON, as the API lists it and webhooks receive it."""
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": iso(self.time),
            "subject": self.subject,
            "workspace": self.workspace_id,
            "data": self.data,
        }


class Webhook(Base):
    __tablename__ = "webhooks"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    name: Mapped[str] = mapped_column(String(63))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[Any]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(128))
    """Kept in clear: signing needs it, as in every Standard Webhooks sender."""
    created_at: Mapped[datetime] = _created()


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("webhook_id", "event_id"),)
    id: Mapped[str] = _id()
    """Also the `webhook-id` header: the same for every retry of one delivery."""
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """One entry per try: time, HTTP status or error, duration."""
    created_at: Mapped[datetime] = _created()


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("workspace_id", "key"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    """None while the first request is still being handled."""
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_type: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = _created()


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    id: Mapped[str] = _id()
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    workspace_id: Mapped[str | None] = _workspace()
    queue: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str | None] = mapped_column(String(64))
    event_type: Mapped[str | None] = mapped_column(String(64))
    retries: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    compensated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the actor's give-up step (failing what the message was about) has run; until
    then it is sent again, so a give-up is never lost."""


class UsageRecord(Base):
    """A service's traffic in one hour, summed over every process that served it."""

    __tablename__ = "usage"
    __table_args__ = (UniqueConstraint("workspace_id", "service", "hour"),)
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    service: Mapped[str] = mapped_column(String(63))
    """The service's name: usage outlives a deleted service, and a name is what is asked."""
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    cancelled: Mapped[int] = mapped_column(BigInteger, default=0)
    """Requests whose client went away before the answer was done."""
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    ttft_ms: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Time to first token of streamed answers: {"buckets", "count", "sum"}."""
    latency_ms: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Whole request: {"buckets", "count", "sum"} (bounds in tunelab.serving.usage)."""


class StoredChat(Base):
    """A chat whose request asked to store it; gone after `expires_at`."""

    __tablename__ = "stored_chats"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The completion's id (`chatcmpl-...`)."""
    workspace_id: Mapped[str] = _workspace()
    service: Mapped[str] = mapped_column(String(63), index=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    completion: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ChatVote(Base):
    """Which answer of a stored comparison a person found best: the comparison's stored
    chats (metadata `comparison`) with it are a preference, the best answer chosen."""

    __tablename__ = "chat_votes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The comparison's id (`cmp-...`); a second vote replaces the first."""
    workspace_id: Mapped[str] = _workspace()
    best: Mapped[str] = mapped_column(String(63))
    """The service whose answer was best."""
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class AuditEntry(Base):
    """A state-changing request: who (the token), what (method and path), when, and how
    it ended (the status). Chats are traffic, counted in `usage`, not here."""

    __tablename__ = "audit_log"
    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = _workspace()
    token_id: Mapped[str] = mapped_column(String(32))
    token_name: Mapped[str] = mapped_column(String(63))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    route: Mapped[str] = mapped_column(String(128))
    status: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
