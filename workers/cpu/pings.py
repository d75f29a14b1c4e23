"""The CPU worker's answer to pings."""

from __future__ import annotations

from tunelab.events.system import Ping, Pong
from tunelab.workers.context import current
from tunelab.workers.registry import subscriber


@subscriber("system.ping", "cpu", max_retries=0)
def answer_ping_cpu(ping: Ping) -> None:
    if ping.data.reply:
        current().bus.publish(Pong.answering(ping, "cpu"))
