"""Background loops: a thread that makes one pass every few seconds, or at once when
poked, until it is stopped. The model-server reconciler, each server's keeper and the
Kubernetes reconciler are loops."""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar, Self

log = logging.getLogger("tunelab.loops")


class Loop(threading.Thread):
    interval: float = 1.0
    """Seconds between passes when nothing pokes the loop."""
    ends_on_error: ClassVar[bool] = False
    """Whether a pass that raises ends the loop (for one its owner restarts)."""
    current: ClassVar[Loop | None] = None
    """The process's running loop of this kind, which actors poke."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def pass_once(self) -> bool:
        """One pass; False ends the loop."""
        raise NotImplementedError

    def finish(self) -> None:
        """After the last pass (stopped, ended or failed)."""

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    if not self.pass_once():
                        return
                except Exception:
                    log.exception("%s: pass failed", self.name)
                    if self.ends_on_error:
                        return
                self.wake.wait(self.interval)
                self.wake.clear()
        finally:
            self.finish()

    def poke(self) -> None:
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.poke()

    @classmethod
    def start_current(cls, *args: Any) -> Self:
        loop = cls(*args)
        cls.current = loop
        loop.start()
        return loop

    @classmethod
    def poke_current(cls) -> None:
        if cls.current is not None:
            cls.current.poke()
