"""Running tunelab's processes for tests: the API and the workers as real children."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def tunelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli", *args]


def wait_until(
    check: Callable[[], Any], what: str, timeout: float = 30, interval: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except httpx.TransportError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Processes:
    env: Mapping[str, str]
    logs: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, *args: str, python: str = sys.executable, module: str = "tunelab.cli"
    ) -> subprocess.Popen[bytes]:
        """`python -m module args` (a `tunelab` command unless `module` says otherwise)."""
        with (self.logs / f"{name}.log").open("ab") as log:  # the child keeps its own handle
            self.children[name] = subprocess.Popen(
                [python, "-m", module, *args],
                env=dict(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.children[name]

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for child in self.children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.glob("*.log"))


def child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
    # Keep the tests' short webhook back-off (set in conftest).
    env.update({k: v for k, v in os.environ.items() if k.startswith("TUNELAB_WEBHOOK_")})
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env
