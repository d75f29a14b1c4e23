"""DeepSpeed's C++ ops, compiled once per machine before the ranks that need them start.

torch compiles an extension under a lock *file* (`<build dir>/lock`, torch's FileBaton)
and waits, without a deadline, while that file exists. A process killed mid-build leaves
it behind, and from then on every DeepSpeed run on the machine hangs in
`init_distributed`: no error, no log line. So tunelab builds under a kernel lock
(released when its holder dies, however it dies) around torch's, and treats a lock file
that outlives a short wait while it holds that lock as left by a dead build.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

STALE_AFTER_S = 60.0
"""How long a lock file may stay while the kernel lock is held. Under it, a live process
only loads an op already built (ninja finds nothing to do: about a second)."""


def extensions_dir() -> Path:
    """Where torch puts compiled extensions: TORCH_EXTENSIONS_DIR, else its default root
    (which holds one folder per Python and accelerator)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def clear_dead_builds(root: Path, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove torch's lock files under `root` that no live build holds. Call it only
    while holding `build_lock(root)`."""
    removed = []
    for baton in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        deadline = time.monotonic() + stale_after_s
        while baton.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            baton.unlink()
        except FileNotFoundError:
            continue  # released by the process that held it
        log.warning("removed %s, left by a build that died", baton)
        removed.append(baton)
    return removed


def build_lock(root: Path) -> FileLock:
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(root / "tunelab-build.lock")


def build_deepspeed_ops() -> None:
    """Compile (or load, when built) the ops DeepSpeed's own setup JIT-loads on this
    accelerator: on a CPU, its shared-memory collectives."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    root = extensions_dir()
    with build_lock(root):
        clear_dead_builds(root)
        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            started = time.monotonic()
            builder.load(verbose=False)
            log.info(
                "DeepSpeed op %s ready in %.0fs (pid %d)",
                builder.NAME,
                time.monotonic() - started,
                os.getpid(),
            )
