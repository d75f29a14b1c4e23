"""The metadata store: migrations build every table, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from tunelab.db import Database
from tunelab.db.tables import Base

API_RESOURCES = {
    "workspaces",
    "api_tokens",
    "datasets",
    "parameter_groups",
    "experiments",
    "tasks",
    "models",
    "services",
    "events",
    "webhooks",
    "webhook_deliveries",
    "idempotency_keys",
    "dead_letters",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    else:
        database = Database(request.getfixturevalue("pg_url"))
    yield database
    database.dispose()


def test_migrations_create_a_table_for_every_api_resource(db: Database) -> None:
    db.migrate()
    assert set(inspect(db.engine).get_table_names()) >= API_RESOURCES


def test_migrations_match_the_models_exactly(db: Database) -> None:
    db.migrate()
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_migrating_twice_changes_nothing(db: Database) -> None:
    db.migrate()
    db.migrate()
    assert "alembic_version" in inspect(db.engine).get_table_names()
