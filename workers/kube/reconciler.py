"""The CPU workers' Kubernetes reconciler: one at a time across all of them (a Redis
lease), it reads Jobs, Deployments and their pods every TUNELAB_KUBE_POLL_S and turns
what it finds into task and service events."""

from __future__ import annotations

import logging
import threading

from redis.exceptions import LockError

from tunelab.workers.context import WorkerContext
from tunelab.workers.gpu.lease import TaskLease
from tunelab.workers.kube.client import kube
from tunelab.workers.kube.servers import reconcile_servers
from tunelab.workers.kube.training import reconcile_jobs

log = logging.getLogger("tunelab.kube")


def reconcile_once(ctx: WorkerContext) -> None:
    client = kube(ctx.settings)
    reconcile_jobs(ctx, client)
    reconcile_servers(ctx, client)


class KubeReconciler(threading.Thread):
    def __init__(self, ctx: WorkerContext, redis: object) -> None:
        super().__init__(name="kube-reconciler", daemon=True)
        self.ctx = ctx
        self.lease = TaskLease(redis, "kube-reconciler")
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        holding = False
        while not self.stopping.is_set():
            try:
                if holding:
                    self.lease.renew()
                else:
                    holding = self.lease.try_acquire()
                if holding:
                    reconcile_once(self.ctx)
            except LockError:
                holding = False  # the lease ran out meanwhile: another worker may take it
            except Exception:
                log.exception("Kubernetes reconcile pass failed")
            self.wake.wait(self.ctx.settings.kube_poll_s)
            self.wake.clear()
        if holding:
            self.lease.release()

    def poke(self) -> None:
        self.wake.set()


_reconciler: KubeReconciler | None = None


def start_kube_reconciler(ctx: WorkerContext, redis: object) -> KubeReconciler:
    global _reconciler
    _reconciler = KubeReconciler(ctx, redis)
    _reconciler.start()
    return _reconciler


def poke() -> None:
    if _reconciler is not None:
        _reconciler.poke()
