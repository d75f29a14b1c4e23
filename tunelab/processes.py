"""Process lifetimes: what tunelab starts must not outlive whoever started it.

A training or model-server process dies with its parent (PR_SET_PDEATHSIG). Model
servers start processes of their own (vLLM's engine, multiprocessing's resource tracker)
that the signal does not reach: the supervisor (`tunelab up`) therefore makes itself a
child subreaper, so that every orphan of the platform is handed to it, and stops them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere), so a
    killed worker leaves no orphan training behind."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def become_subreaper() -> None:
    """Orphaned descendants become this process's children instead of init's."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def children() -> list[int]:
    """This process's children, adopted orphans included."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(stat.parent.name))
    return found


def stop_children(keep: set[int], grace_s: float = 5.0) -> None:
    """SIGTERM every child not in `keep` (adopted orphans: their parent is gone), then
    SIGKILL what is left after `grace_s`; reap them all."""
    deadline = time.monotonic() + grace_s
    while pids := [p for p in children() if p not in keep]:
        sig = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
