"""Running a training job process and listening to it.

The job runs in a process of its own (several under torchrun for a multi-GPU task):
a crash, an out-of-memory kill or a stuck CUDA context then takes only the job, and
cancel is a signal. It dies with the worker (PR_SET_PDEATHSIG), so a killed worker
leaves no orphan training on; the redelivered task resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tunelab.processes import die_with_parent

STOP_GRACE_S = 10


def job_command(spec_path: Path, processes: int) -> list[str]:
    job = ["-m", "tunelab.training.job", str(spec_path)]
    if processes <= 1:
        return [sys.executable, *job]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        *job,
    ]


@dataclass
class Message:
    kind: str
    fields: dict[str, Any]


class JobProcess:
    """A started job: its messages as they come, its stderr into `log_path`."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,  # one process group: a stop reaches torchrun's ranks
            preexec_fn=die_with_parent,
        )
        self._messages: queue.Queue[Message | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").strip()
            try:
                body = json.loads(line)
                message = Message(body.pop("kind"), body)
            except (ValueError, KeyError, AttributeError):
                message = Message("log", {"message": line})
            self._messages.put(message)
        self._messages.put(None)

    def messages(self, poll_s: float) -> Iterator[Message | None]:
        """Messages until the output ends; None every `poll_s` of silence."""
        while True:
            try:
                message = self._messages.get(timeout=poll_s)
            except queue.Empty:
                yield None
                continue
            if message is None:
                return
            yield message

    def stop(self) -> None:
        """SIGTERM (the job stops between two steps), then SIGKILL after a grace period."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self) -> int:
        code = self.proc.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait()
