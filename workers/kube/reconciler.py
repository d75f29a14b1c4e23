"""The CPU workers' Kubernetes reconciler: one at a time across all of them (a Redis
lease), it reads Jobs, Deployments and their pods every TUNELAB_KUBE_POLL_S and turns
what it finds into task and service events."""

from __future__ import annotations

import logging

from redis.exceptions import LockError

from tunelab.context import Context
from tunelab.lease import Lease
from tunelab.loops import Loop
from tunelab.workers.kube.client import kube
from tunelab.workers.kube.servers import reconcile_servers
from tunelab.workers.kube.training import reconcile_jobs

log = logging.getLogger("tunelab.kube")


def reconcile_once(ctx: Context) -> None:
    client = kube(ctx.settings)
    reconcile_jobs(ctx, client)
    reconcile_servers(ctx, client)


class KubeReconciler(Loop):
    def __init__(self, ctx: Context, redis: object) -> None:
        super().__init__("kube-reconciler")
        self.ctx = ctx
        self.lease = Lease(redis, "kube-reconciler")
        self.holding = False
        self.interval = ctx.settings.kube_poll_s

    def pass_once(self) -> bool:
        try:
            if self.holding:
                self.lease.renew()
            else:
                self.holding = self.lease.try_acquire()
            if self.holding:
                reconcile_once(self.ctx)
        except LockError:
            self.holding = False  # the lease ran out meanwhile: another worker may take it
        return True

    def finish(self) -> None:
        if self.holding:
            self.lease.release()
