"""Leases: at most one live holder of a thing across every process, for as long as it
keeps renewing. A holder that dies stops renewing, its lease runs out, and another takes
over; no one has to notice the death.

What is leased: a task's training (a message can be delivered twice while its first
consumer lives, and two jobs would overwrite each other's checkpoints), a model server's
keeper, the Kubernetes reconciler.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.exceptions import LockError, LockNotOwnedError

TTL_S = 15
RENEW_EVERY_S = 5


class Lease:
    def __init__(
        self, client: Any, name: str, ttl_s: float = TTL_S, renew_every_s: float = RENEW_EVERY_S
    ) -> None:
        # A StubBroker (tests of one process) has no Redis client: nothing to share.
        key = f"tunelab:lease:{name}"
        self.lock = client.lock(key, timeout=ttl_s, thread_local=False) if client else None
        self.ttl_s, self.renew_every_s, self.renewed = ttl_s, renew_every_s, 0.0

    def acquire(self) -> bool:
        """Wait long enough for a dead holder's lease to run out; False when another
        live job holds it."""
        if self.lock is None:
            return True
        if self.lock.acquire(blocking=True, blocking_timeout=2 * self.ttl_s):
            self.renewed = time.monotonic()
            return True
        return False

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it, without waiting."""
        if self.lock is None:
            return True
        if self.lock.acquire(blocking=False):
            self.renewed = time.monotonic()
            return True
        return False

    def renew(self) -> None:
        """Extend the lease. One that vanished from Redis (a restart without its data, an
        eviction) is taken again if nobody else took it meanwhile; LockNotOwnedError
        when someone did."""
        if self.lock is None or time.monotonic() - self.renewed < self.renew_every_s:
            return
        try:
            self.lock.extend(self.ttl_s, replace_ttl=True)
        except LockNotOwnedError:
            if not self.lock.acquire(blocking=False, token=self.lock.local.token):
                raise
        self.renewed = time.monotonic()

    def release(self) -> None:
        if self.lock is not None:
            with contextlib.suppress(LockError):  # expired meanwhile: nothing of ours left
                self.lock.release()
