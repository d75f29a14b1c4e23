"""The per-task lease on real Redis: a live job keeps its task, a dead one's runs out."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
import redis
from redis.exceptions import LockNotOwnedError

from tunelab.lease import Lease


def test_a_live_jobs_lease_turns_a_duplicate_delivery_away(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    task = secrets.token_hex(4)
    holder = Lease(client, task, ttl_s=0.5, renew_every_s=0.1)
    assert holder.acquire()
    stop = threading.Event()

    def keep_renewing() -> None:
        while not stop.wait(0.05):
            holder.renew()

    renewer = threading.Thread(target=keep_renewing)
    renewer.start()
    try:
        assert not Lease(client, task, ttl_s=0.5).acquire()  # waited 1 s: still held
    finally:
        stop.set()
        renewer.join()
        holder.release()
    client.close()


def test_a_dead_jobs_lease_runs_out_and_the_redelivery_takes_over(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    task = secrets.token_hex(4)
    assert Lease(client, task, ttl_s=0.5).acquire()  # and never renewed: "killed"
    started = time.monotonic()
    successor = Lease(client, task, ttl_s=0.5)
    assert successor.acquire()
    assert time.monotonic() - started < 1.0
    successor.release()
    client.close()


def test_a_lease_that_vanished_from_redis_is_taken_again_unless_another_took_it(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    task = secrets.token_hex(4)
    holder = Lease(client, task, ttl_s=5, renew_every_s=0)
    assert holder.acquire()
    client.delete(f"tunelab:lease:{task}")  # Redis lost it (a restart without its data)
    holder.renew()
    assert not Lease(client, task, ttl_s=5).try_acquire()  # held again
    client.delete(f"tunelab:lease:{task}")
    other = Lease(client, task, ttl_s=5)
    assert other.try_acquire()  # someone else took it meanwhile
    with pytest.raises(LockNotOwnedError):
        holder.renew()
    other.release()
    client.close()
