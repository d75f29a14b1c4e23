"""Where a service's chats go: service → model server → the model name on that server.

Read from the database once and cached per process; whatever changes a route (a
service ready, failed or deleted, a server starting again on another port) is announced
on a Redis channel that every process with a table listens to, and each entry also
expires after a few seconds, so a missed announcement costs seconds, not a wrong answer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.db import Database
from tunelab.db.tables import FineTuningJob, Model, ModelServer, Service, Workspace
from tunelab.fine_tuning import job_of_model_name, job_task, service_name
from tunelab.lifecycle.specs import ServiceSpec
from tunelab.serving.served import Served, served

log = logging.getLogger("tunelab.serving")

CHANGES_CHANNEL = "tunelab:serving:changes"
"""Redis pub/sub channel: a message means "some route may have changed"."""


def announce_change(redis: Any) -> None:
    """Tell every route table that routes changed (no-op without Redis, as in tests
    with a stub broker)."""
    if redis is not None:
        try:
            redis.publish(CHANGES_CHANNEL, b"1")
        except Exception:  # the entries expire anyway: a lost notice only costs seconds
            log.warning("could not announce a serving change", exc_info=True)


@dataclass(frozen=True)
class Route:
    workspace_id: str
    workspace: str
    service_id: str
    service: str
    status: str
    """The service's: deploying, ready or failed."""
    server_status: str | None
    url: str | None
    served: Served
    store: bool
    """Whether every chat of the service is stored (its deploy request's `store`)."""

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.server_status == "ready" and self.url is not None

    @property
    def target(self) -> str:
        return self.served.target(self.service_id)


def fine_tuned_services(session: Session, workspace_id: str, names: list[str]) -> dict[str, str]:
    """The service each `ft:` model name (OpenAI's name of a job's model) is asked
    through: the one its job deployed, else a ready one of the model, else any."""
    found = {}
    for name in names:
        job_id = job_of_model_name(name)
        job = session.get(FineTuningJob, job_id) if job_id else None
        if job is None or job.workspace_id != workspace_id:
            continue
        task = job_task(session, job)
        model = task.model if task is not None else None
        services = session.scalars(
            select(Service).where(Service.workspace_id == workspace_id, Service.model == model)
        ).all()
        asked = service_name(job)
        ranked = sorted(services, key=lambda s: (s.name != asked, s.status != "ready", s.name))
        if ranked:
            found[name] = ranked[0].name
    return found


class RouteTable:
    def __init__(self, db: Database, ttl_s: float = 5.0) -> None:
        self.db, self.ttl_s = db, ttl_s
        self._entries: dict[tuple[str, str], tuple[Route | None, float]] = {}
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    async def get(self, workspace_id: str, names: list[str]) -> dict[str, Route | None]:
        """The route of each named service of the workspace (None: no such service)."""
        now = time.monotonic()
        found: dict[str, Route | None] = {}
        with self._lock:
            for name in names:
                entry = self._entries.get((workspace_id, name))
                if entry is not None and entry[1] > now:
                    found[name] = entry[0]
        missing = [n for n in names if n not in found]
        if missing:
            read = await asyncio.to_thread(self.read, workspace_id, missing)
            expires = time.monotonic() + self.ttl_s
            with self._lock:
                for name in missing:
                    self._entries[(workspace_id, name)] = (read.get(name), expires)
            found.update({n: read.get(n) for n in missing})
        return found

    def read(self, workspace_id: str, names: list[str]) -> dict[str, Route]:
        with self.db.session() as session:
            aliases = fine_tuned_services(session, workspace_id, names)
            wanted = [aliases.get(n, n) for n in names]
            rows = session.execute(
                select(Service, ModelServer, Workspace.name)
                .join(Workspace, Workspace.id == Service.workspace_id)
                .outerjoin(ModelServer, ModelServer.id == Service.server_id)
                .where(Service.workspace_id == workspace_id, Service.name.in_(wanted))
            ).all()
            routes = {}
            for service, server, workspace in rows:
                spec = ServiceSpec.of(service)
                model = session.get(Model, spec.model_id)
                if model is None:
                    continue  # deleted under the service: it cannot be asked
                routes[service.name] = Route(
                    workspace_id=workspace_id,
                    workspace=workspace,
                    service_id=service.id,
                    service=service.name,
                    status=service.status,
                    server_status=server.status if server else None,
                    url=server.url if server else None,
                    served=served(model),
                    store=spec.request.store,
                )
            for alias, name in aliases.items():
                if name in routes:
                    routes[alias] = routes[name]
            return routes

    def forget(self, route: Route) -> None:
        """Read this route from the database next time (its server did not answer)."""
        with self._lock:
            self._entries.pop((route.workspace_id, route.service), None)

    def invalidate(self) -> None:
        """Everything changed: forget every route and wake whoever waits (any thread)."""
        with self._lock:
            self._entries.clear()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_settle, future)

    async def changed(self, timeout: float) -> None:
        """Return once routes changed, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ChangeListener(threading.Thread):
    """Listens on the changes channel and invalidates the table on every notice; after a
    lost connection it invalidates too, since notices may have been missed."""

    def __init__(self, redis: Any, table: RouteTable) -> None:
        super().__init__(name="route-changes", daemon=True)
        self.redis, self.table = redis, table
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANGES_CHANNEL)
                self.table.invalidate()
                while not self.stopping.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self.table.invalidate()
                pubsub.close()
            except Exception:
                log.warning("lost the serving changes channel; listening again", exc_info=True)
                self.stopping.wait(1.0)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
