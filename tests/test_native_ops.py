"""A native-op build that died half-way must not hang every later DeepSpeed run."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from torch.utils.file_baton import FileBaton

from tunelab.training.native_ops import build_lock, clear_dead_builds

HOLD_AND_DIE = """
import os, signal, sys
from torch.utils.file_baton import FileBaton
assert FileBaton(sys.argv[1]).try_acquire()
print("held", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as a killed worker dies: no cleanup runs
"""


def test_a_lock_file_left_by_a_killed_build_is_removed(tmp_path: Path) -> None:
    baton = tmp_path / "deepspeed_shm_comm" / "lock"
    baton.parent.mkdir()
    died = subprocess.run([sys.executable, "-c", HOLD_AND_DIE, str(baton)], capture_output=True)
    assert died.returncode == -signal.SIGKILL and b"held" in died.stdout
    assert baton.exists()  # torch alone would now wait on it forever

    with build_lock(tmp_path):
        assert clear_dead_builds(tmp_path, stale_after_s=0.5) == [baton]
    assert not baton.exists()
    assert FileBaton(str(baton)).try_acquire()  # the next build proceeds


def test_a_lock_file_released_in_time_is_left_to_its_holder(tmp_path: Path) -> None:
    baton = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    baton.parent.mkdir(parents=True)
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from torch.utils.file_baton import FileBaton; "
            "b = FileBaton(sys.argv[1]); assert b.try_acquire(); print('held', flush=True); "
            "sys.stdin.readline(); b.release()",
            str(baton),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        _release_while_clearing(holder, tmp_path)
    assert holder.returncode == 0  # its own release found its file


def _release_while_clearing(holder: subprocess.Popen[str], tmp_path: Path) -> None:
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    holder.stdin.write("release\n")
    holder.stdin.flush()
    with build_lock(tmp_path):
        assert clear_dead_builds(tmp_path, stale_after_s=60) == []
    holder.wait(timeout=30)
