"""At most one live job per task, across every GPU worker.

A message can be delivered twice while its first consumer is still alive (a missed
heartbeat, an operator re-sending it); two jobs would then train the same task and
overwrite each other's checkpoints. The job's worker holds a Redis lock that expires
unless renewed, so a killed worker's lease runs out on its own and the redelivered
message takes over.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.exceptions import LockError

TTL_S = 15
RENEW_EVERY_S = 5


class TaskLease:
    def __init__(
        self, client: Any, task_id: str, ttl_s: float = TTL_S, renew_every_s: float = RENEW_EVERY_S
    ) -> None:
        # A StubBroker (tests of one process) has no Redis client: nothing to share.
        key = f"tunelab:task-lease:{task_id}"
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
        if self.lock is not None and time.monotonic() - self.renewed >= self.renew_every_s:
            self.lock.extend(self.ttl_s, replace_ttl=True)
            self.renewed = time.monotonic()

    def release(self) -> None:
        if self.lock is not None:
            with contextlib.suppress(LockError):  # expired meanwhile: nothing of ours left
                self.lock.release()
