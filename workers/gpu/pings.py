"""The GPU worker's answer to pings: proves the GPU queue is consumed."""

from __future__ import annotations

from tunelab.events.system import Ping, Pong
from tunelab.workers.context import current
from tunelab.workers.registry import subscriber


@subscriber("system.ping", "gpu", max_retries=0)
def answer_ping_gpu(ping: Ping) -> None:
    if ping.data.reply:
        current().bus.publish(Pong.answering(ping, "gpu"))
