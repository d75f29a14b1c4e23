"""The metadata store: SQLAlchemy engine, sessions and Alembic migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # API and workers write the same file from separate processes: WAL lets readers
    # carry on during a write, and busy_timeout waits out a writer instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL cannot corrupt the database; it may lose the last commits on
    # power loss, and spares an fsync per commit (the API commits once per event).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """One engine and session factory per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # As many connections as threads that use them at once (the API's thread
            # pool runs 40): a connection past the pool is opened and closed per use. No
            # pre-ping (a round trip per checkout): a connection the server dropped fails
            # one statement, which invalidates the pool, and old ones are recycled.
            self.engine = create_engine(url, pool_size=20, max_overflow=20, pool_recycle=1800)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


class RowBuffer:
    """Rows kept in memory and added in one transaction at the next flush: for what
    must be written but must not cost the request it comes from a database round trip
    (stored chats, the audit log). A failed flush keeps them for the next."""

    def __init__(self) -> None:
        self._pending: list[Any] = []
        self._lock = threading.Lock()

    def add(self, row: Any) -> None:
        with self._lock:
            self._pending.append(row)

    def flush(self, db: Database) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            with db.session() as session:
                session.add_all(pending)
        except Exception:
            with self._lock:
                self._pending[:0] = pending
            raise
