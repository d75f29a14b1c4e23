"""A training task's checkpoints in the object store, so that a task whose process or
machine dies resumes where it was on any other."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunelab.store import ObjectNotFound, ObjectStore

KEEP_CHECKPOINTS = 2


class StoreCheckpoints:
    """Checkpoints as objects: one state file per step, or (DeepSpeed) a folder that
    every rank wrote. A small pointer object names the complete ones, newest last."""

    def __init__(
        self, store: ObjectStore, prefix: str, on_saved: Callable[[int], None] = lambda _: None
    ) -> None:
        self.store, self.prefix, self.on_saved = store, prefix, on_saved

    def save(self, step: int, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.store.put_bytes(f"{self.prefix}step-{step:08d}.pt", buffer.getvalue())
        self._advance(step)

    def save_folder(self, step: int, folder: Path) -> None:
        upload_dir(self.store, folder, f"{self.prefix}step-{step:08d}/")
        self._advance(step)

    def _advance(self, step: int) -> None:
        previous = self._pointer()
        # The pointer moves only once the checkpoint is whole: a kill mid-upload leaves
        # the previous checkpoint as the latest.
        keep = [*previous[-(KEEP_CHECKPOINTS - 1) :], step]
        self.store.put_bytes(f"{self.prefix}latest.json", json.dumps({"steps": keep}).encode())
        for old in previous[: -(KEEP_CHECKPOINTS - 1)]:
            self.store.delete(f"{self.prefix}step-{old:08d}.pt")
            self.store.delete_prefix(f"{self.prefix}step-{old:08d}/")
        self.on_saved(step)

    def _pointer(self) -> list[int]:
        try:
            raw = self.store.read_bytes(f"{self.prefix}latest.json")
        except ObjectNotFound:
            return []
        steps: list[int] = json.loads(raw)["steps"]
        return steps

    def latest(self) -> dict[str, Any] | None:
        steps = self._pointer()
        if not steps:
            return None
        raw = self.store.read_bytes(f"{self.prefix}step-{steps[-1]:08d}.pt")
        state: dict[str, Any] = torch.load(io.BytesIO(raw), weights_only=True)
        return state

    def fetch_latest_folder(self, into: Path) -> int | None:
        steps = self._pointer()
        if not steps:
            return None
        step = steps[-1]
        prefix = f"{self.prefix}step-{step:08d}/"
        for key in self.store.list(prefix):
            target = into / key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.store.read_bytes(key))
        return step


def upload_dir(store: ObjectStore, folder: Path, prefix: str) -> list[str]:
    """Every file below `folder`, under `prefix`; their names relative to it."""
    names = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            name = path.relative_to(folder).as_posix()
            with path.open("rb") as f:
                store.put_stream(f"{prefix}{name}", f)
            names.append(name)
    return names
