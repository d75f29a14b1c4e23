"""Shared fixtures: real services on loopback, fresh databases, a platform in processes."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from dramatiq import Worker

from tests.kube import start_control_plane
from tests.services import ServiceUnavailable, Started, ensure_postgres, ensure_redis, start_s3
from tunelab.context import Context
from tunelab.db import Database
from tunelab.events.broker import queue_name
from tunelab.events.bus import EventBus
from tunelab.settings import get_settings
from tunelab.store.local import LocalStore
from tunelab.workers import context

pytest_plugins = ["tests.platform_fixture"]

# Retries in tests back off for milliseconds, not seconds. Set before settings are read.
os.environ.setdefault("TUNELAB_WEBHOOK_MIN_BACKOFF_MS", "50")
os.environ.setdefault("TUNELAB_WEBHOOK_MAX_BACKOFF_MS", "200")
os.environ.setdefault("TUNELAB_WEBHOOK_MAX_RETRIES", "2")
os.environ.setdefault("TUNELAB_WEBHOOK_TIMEOUT_S", "2")
# The built-in base model takes about a minute to build: once per machine, not per test.
os.environ.setdefault("TUNELAB_MODEL_CACHE", str(Path.home() / ".cache" / "tunelab" / "models"))
# Test receivers listen on loopback, which production refuses (SSRF).
os.environ.setdefault("TUNELAB_WEBHOOK_ALLOW_PRIVATE", "true")


def _service(start: type[Started] | object, name: str) -> Iterator[Started]:
    try:
        started = start()  # type: ignore[operator]
    except ServiceUnavailable as exc:
        if os.environ.get("CI"):
            raise  # CI must run every tier
        pytest.skip(f"{name} unavailable when run by hand: {exc}")
    yield started
    started.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    for started in _service(ensure_redis, "Redis"):
        redis.Redis.from_url(started.url).flushdb()
        yield started.url


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    """A real Kubernetes API server (1.20, no kubelet) for the whole session."""
    for started in _service(start_control_plane, "Kubernetes control plane"):
        yield started.url


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    for started in _service(ensure_postgres, "PostgreSQL"):
        yield started.url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    for started in _service(start_s3, "S3 server"):
        yield started.url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test (SQLAlchemy URL)."""
    name = f"tunelab_test_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin_url.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def queues() -> dict[str, str]:
    """Queue names of one test, so no message of another test can reach it."""
    tag = secrets.token_hex(3)
    return {"cpu": f"test-{tag}-cpu", "gpu": f"test-{tag}-gpu"}


@pytest.fixture(scope="session")
def stub_broker() -> Iterator[object]:
    """A StubBroker with every actor declared on it, once per test process."""
    from dramatiq.brokers.stub import StubBroker

    from tunelab.workers.setup import declare_actors

    broker = declare_actors(StubBroker(), get_settings(), ("cpu", "gpu", "train"))
    broker.emit_after("process_boot")
    yield broker
    broker.close()


@pytest.fixture
def ctx(stub_broker: Any, tmp_path: Path) -> Iterator[Context]:
    settings = get_settings()
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    db.migrate()
    bus = EventBus(stub_broker, db, lambda worker: queue_name(settings, worker))
    worker_context = Context(settings, db, LocalStore(tmp_path / "objects"), bus)
    context.install(worker_context)
    worker = Worker(stub_broker, worker_timeout=10)
    worker.start()
    yield worker_context
    worker.stop()
    stub_broker.flush_all()
    db.dispose()
