"""A bounded number of queued (batch) requests per model server, across every process
that sends them: a counting semaphore in Redis, whose holds expire if their holder dies.

Interactive chats take no slot, so however big a batch is, it holds at most `limit` of a
server's requests at a time and the server's other capacity stays with people.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

# Drop holds older than their lease, then take a slot if one is free (1) or not (0).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[2]))
  return 1
end
return 0
"""


class ServerSlots:
    def __init__(self, redis: Any, limit: int, lease_s: float, poll_s: float = 0.05) -> None:
        self.redis, self.limit, self.lease_s, self.poll_s = redis, limit, lease_s, poll_s
        self._acquire = redis.register_script(_ACQUIRE)

    @asynccontextmanager
    async def hold(self, server: str) -> AsyncIterator[None]:
        key, token = f"tunelab:slots:{server}", uuid.uuid4().hex
        while not await asyncio.to_thread(
            self._acquire, keys=[key], args=[time.time(), self.lease_s, self.limit, token]
        ):
            await asyncio.sleep(self.poll_s)  # another process's hold ends without telling us
        try:
            yield
        finally:
            await asyncio.to_thread(self.redis.zrem, key, token)
