"""Keeping model servers as the database says they should be.

The services placed on a server are its adapter registry. A keeper thread per server
makes the process match it: starts the server when a service needs it, loads each
service's adapter (checked first) and marks the service ready, restarts a server that
died and loads every adapter again before it takes requests, unloads what was deleted,
and stops a server no service needs. A Redis lease per server lets one GPU worker keep
it; a dead worker's lease runs out and another takes over.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from tunelab.context import Context
from tunelab.db.tables import Model, ModelServer, Service
from tunelab.lease import Lease
from tunelab.lifecycle.services import fail_service, mark_ready
from tunelab.lifecycle.specs import ServiceSpec
from tunelab.lifecycle.states import SERVICE_LIVE
from tunelab.loops import Loop
from tunelab.serving.adapters import AdapterRejected, check_adapter
from tunelab.serving.folders import local_dir
from tunelab.serving.routes import announce_change
from tunelab.serving.served import adapter_name, served
from tunelab.workers.gpu.serving.process import ServerFailed, ServerProcess

log = logging.getLogger("tunelab.serving")

START_ATTEMPTS = 3
"""Failed starts in a row before the server's services are failed with its log."""


class Keeper(Loop):
    """Keeps one model server's process running with its services' adapters loaded;
    a failed pass ends it, and the reconciler gives the server a fresh keeper."""

    ends_on_error = True

    def __init__(self, ctx: Context, server_id: str, lease: Lease) -> None:
        super().__init__(f"keeper-{server_id[:8]}")
        self.ctx, self.server_id, self.lease = ctx, server_id, lease
        self.process: ServerProcess | None = None
        self.loaded: set[str] = set()
        self.failed_starts = 0

    def pass_once(self) -> bool:
        self.lease.renew()
        return self.step()

    def finish(self) -> None:
        if self.process is not None:
            self.process.close()
        self.lease.release()

    def step(self) -> bool:
        """One pass; False once the server is gone for good."""
        with self.ctx.db.session() as session:
            server = session.get(ModelServer, self.server_id)
            services = (
                list(
                    session.scalars(
                        select(Service).where(
                            Service.server_id == self.server_id, Service.status.in_(SERVICE_LIVE)
                        )
                    )
                )
                if server
                else []
            )
            if server is None or not services:
                if server is not None and not self.remove_if_unused(session):
                    return True  # a service was placed on it meanwhile
                log.info("server %s is no longer needed", self.server_id)
                return False
            engine, model_uri = server.engine, server.model_uri
            wanted = {s.id: s.status for s in services}
        down = self.process is None or not self.process.alive()
        if down and not self.restart(engine, model_uri, wanted):
            return self.failed_starts < START_ATTEMPTS
        self.sync_adapters(wanted)
        return True

    def remove_if_unused(self, session: Session) -> bool:
        """Delete the server's row unless a live service is on it by now (placement may
        have committed one since this pass read the services)."""
        in_use = exists().where(
            Service.server_id == self.server_id, Service.status.in_(SERVICE_LIVE)
        )
        gone = session.execute(delete(ModelServer).where(ModelServer.id == self.server_id, ~in_use))
        if not gone.rowcount:  # type: ignore[attr-defined]
            return False
        shutil.rmtree(self.ctx.settings.data_dir / "servers" / self.server_id, True)
        return True

    def restart(self, engine: str, model_uri: str, wanted: dict[str, str]) -> bool:
        first = self.process is None
        self.set_server(status="starting", url=None, pid=None, restarted=not first)
        if self.process is not None:
            self.process.close()  # whatever is left of the dead one
        self.loaded = set()
        try:
            model_dir = local_dir(self.ctx, model_uri)
            self.lease.renew()  # a download can take a while
            workdir = self.ctx.settings.data_dir / "servers" / self.server_id
            self.process = ServerProcess(self.ctx.settings, engine, model_dir, workdir)
            self.process.start(heartbeat=self.lease.renew)
        except (ServerFailed, FileNotFoundError, OSError) as exc:
            self.failed_starts += 1
            log.warning("server %s did not start: %s", self.server_id, exc)
            if self.failed_starts >= START_ATTEMPTS:
                message = f"The model server did not start: {exc}"[-2000:]
                for service_id in wanted:
                    fail_service(self.ctx, service_id, "server_failed", message)
            return False
        self.failed_starts = 0
        self.set_server(status="starting", url=self.process.url, pid=self.process.pid)
        return True

    def sync_adapters(self, wanted: dict[str, str]) -> None:
        assert self.process is not None
        for service_id in sorted(self.loaded - set(wanted)):
            self.process.unload_adapter(adapter_name(service_id))
            self.loaded.discard(service_id)
        for service_id in wanted:
            if service_id not in self.loaded:
                self.lease.renew()
                problem = self.load(service_id)
                if problem is not None:
                    fail_service(self.ctx, service_id, *problem)
                    continue
                self.loaded.add(service_id)
        # Requests are taken only once every adapter of the registry is back.
        self.set_server(status="ready", url=self.process.url, pid=self.process.pid)
        for service_id, status in wanted.items():
            if status == "deploying" and service_id in self.loaded:
                mark_ready(self.ctx, service_id)

    def load(self, service_id: str) -> tuple[str, str] | None:
        """Load the service's adapter, if it has one; (code, reason) when it cannot be."""
        assert self.process is not None
        with self.ctx.db.session() as session:
            service = session.get(Service, service_id)
            model = session.get(Model, ServiceSpec.of(service).model_id) if service else None
            if model is None:
                return ("model_missing", "the service's model was deleted")
            adapter_uri = served(model).adapter_uri
        if adapter_uri is None:
            return None  # the server's own model
        try:
            folder: Path = local_dir(self.ctx, adapter_uri)
            check_adapter(folder, self.ctx.settings.vllm_max_lora_rank)
            self.process.load_adapter(adapter_name(service_id), folder)
        except AdapterRejected as exc:
            return ("adapter_rejected", f"The adapter cannot be served: {exc}.")
        except (ServerFailed, FileNotFoundError, httpx.HTTPError) as exc:
            return ("adapter_load_failed", f"Loading the adapter failed: {exc}"[-2000:])
        return None

    def set_server(
        self, *, status: str, url: str | None, pid: int | None, restarted: bool = False
    ) -> None:
        with self.ctx.db.session() as session:
            server = session.get(ModelServer, self.server_id)
            if server is None:
                return
            if (server.status, server.url, server.pid) == (status, url, pid) and not restarted:
                return
            server.status, server.url, server.pid = status, url, pid
            server.restarts += int(restarted)
        announce_change(self.ctx.bus.redis)  # chats wait for, or move to, the new address


class Reconciler(Loop):
    """Finds the servers that should run and gives each a keeper in one GPU worker."""

    def __init__(self, ctx: Context, client: object) -> None:
        super().__init__("server-reconciler")
        self.ctx, self.client = ctx, client
        self.keepers: dict[str, Keeper] = {}

    def finish(self) -> None:
        for keeper in self.keepers.values():
            keeper.stop()
        for keeper in self.keepers.values():
            keeper.join(timeout=30)

    def pass_once(self) -> bool:
        with self.ctx.db.session() as session:
            server_ids = list(session.scalars(select(ModelServer.id)))
        for server_id, keeper in list(self.keepers.items()):
            if not keeper.is_alive():
                del self.keepers[server_id]
        for server_id in server_ids:
            if server_id in self.keepers:
                self.keepers[server_id].wake.set()
                continue
            lease = Lease(self.client, f"server-{server_id}")
            if lease.try_acquire():
                keeper = Keeper(self.ctx, server_id, lease)
                self.keepers[server_id] = keeper
                keeper.start()
        return True

    def poke(self) -> None:
        super().poke()
        for keeper in list(self.keepers.values()):
            keeper.poke()
