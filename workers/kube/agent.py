"""The adapter sidecar of a model-server pod (`tunelab adapter-agent SERVER_ID`).

The registry (the services on this server, in the database) is the truth, not vLLM's
memory: every few seconds the agent compares it with what its own vLLM lists, fetches
and loads what is missing (all of it after vLLM restarts), and unloads what was
deleted. It answers `/ready` while vLLM is up and holds every adapter it has served before (the
pod's readiness: the Service routes requests to this replica only then; an adapter of a
newly deployed service does not take the replica out of rotation while it loads), and
`/adapters` with what is loaded, which the reconciler reads to mark services ready.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from sqlalchemy import select

from tunelab.context import Context
from tunelab.db.tables import Model, Service
from tunelab.lifecycle.services import fail_service
from tunelab.lifecycle.specs import ServiceSpec
from tunelab.lifecycle.states import SERVICE_LIVE
from tunelab.serving.adapters import AdapterRejected, check_adapter
from tunelab.serving.folders import local_dir
from tunelab.serving.served import adapter_name, served

log = logging.getLogger("tunelab.adapters")

LOAD_ATTEMPTS = 3
"""Refused loads of one adapter before its service fails with the server's reason."""


class AdapterAgent:
    def __init__(self, ctx: Context, server_id: str, vllm_url: str) -> None:
        self.ctx, self.server_id, self.vllm_url = ctx, server_id, vllm_url
        self.loaded: set[str] = set()
        self.known: set[str] = set()
        """Services whose adapters this replica has held: after a vLLM restart it is not
        ready until they are all back."""
        self.failures: dict[str, int] = {}
        self.ready = False

    def wanted(self) -> dict[str, str]:
        """Service id → adapter URI of every live LoRA service on this server."""
        with self.ctx.db.session() as session:
            services = session.scalars(
                select(Service).where(
                    Service.server_id == self.server_id, Service.status.in_(SERVICE_LIVE)
                )
            )
            found = {}
            for service in services:
                model = session.get(Model, ServiceSpec.of(service).model_id)
                adapter = served(model).adapter_uri if model else None
                if adapter:
                    found[service.id] = adapter
            return found

    def listed(self) -> set[str]:
        reply = httpx.get(f"{self.vllm_url}/v1/models", timeout=10)
        reply.raise_for_status()
        return {m["id"] for m in reply.json()["data"]}

    def sync(self) -> None:
        """One comparison of registry and server; raises httpx.HTTPError while vLLM is
        not up."""
        wanted = self.wanted()
        listed = self.listed()
        names = {adapter_name(sid): sid for sid in wanted}
        for name in listed:
            if name.startswith("svc-") and name not in names:
                httpx.post(f"{self.vllm_url}/v1/unload_lora_adapter", json={"lora_name": name})
        loaded = {sid for name, sid in names.items() if name in listed}
        for service_id, uri in wanted.items():
            if service_id in loaded:
                continue
            try:
                folder = local_dir(self.ctx, uri)
                check_adapter(folder, self.ctx.settings.vllm_max_lora_rank)
            except (AdapterRejected, FileNotFoundError) as exc:
                fail_service(
                    self.ctx,
                    service_id,
                    "adapter_rejected",
                    f"The adapter cannot be served: {exc}.",
                )
                continue
            reply = httpx.post(
                f"{self.vllm_url}/v1/load_lora_adapter",
                json={"lora_name": adapter_name(service_id), "lora_path": str(folder)},
                timeout=120,
            )
            if reply.status_code == 200:
                loaded.add(service_id)
                self.failures.pop(service_id, None)
                continue
            log.warning("loading %s failed: %s", service_id, reply.text[:500])
            self.failures[service_id] = self.failures.get(service_id, 0) + 1
            if self.failures[service_id] >= LOAD_ATTEMPTS:
                message = f"The model server refused the adapter: {reply.text}"[:2000]
                fail_service(self.ctx, service_id, "adapter_load_failed", message)
        self.loaded = loaded
        self.known |= loaded
        self.ready = self.known & set(wanted) <= loaded

    def run(self, stop: threading.Event, every_s: float = 2.0) -> None:
        while not stop.is_set():
            try:
                self.sync()
            except httpx.HTTPError as exc:
                self.loaded = set()  # vLLM is down or restarting: it holds nothing now
                self.ready = False
                log.info("vLLM not answering yet: %s", exc)
            except Exception:
                log.exception("adapter sync failed")
            stop.wait(every_s)


def serve(agent: AdapterAgent, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ready":
                self._send(200 if agent.ready else 503, {"ready": agent.ready})
            elif self.path == "/adapters":
                self._send(200, {"loaded": sorted(agent.loaded), "ready": agent.ready})
            else:
                self._send(404, {"error": "not found"})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:  # probes every 2 s: not worth a line
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
