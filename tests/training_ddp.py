"""Run under torchrun by tests/test_training.py: a few steps of a small model with the
trainer over however many processes torchrun gives, printing the losses as JSON.

    python -m torch.distributed.run --nproc_per_node=N -m tests.training_ddp DATA_DIR
        ENGINE [STORE_DIR]

With STORE_DIR the run is stopped after 4 steps and started again from its checkpoint
in a local object store there, as a killed task is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests.test_training import small_setup
from tunelab.store.local import LocalStore
from tunelab.training.job import StoreCheckpoints, init_distributed
from tunelab.training.trainer import Stopped, TrainResult


def main() -> None:
    data_dir, engine = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        init_distributed("deepspeed" if engine == "deepspeed" else "ddp")
    torch.set_num_threads(1)
    kw = {"rank": rank, "world": world, "engine": engine}
    result: TrainResult
    if len(sys.argv) > 3:
        checkpoints = StoreCheckpoints(LocalStore(Path(sys.argv[3])), "task/")
        calls = {"n": 0}

        def stop_after_four() -> bool:
            calls["n"] += 1
            return calls["n"] > 4

        try:
            small_setup(data_dir, checkpoints=checkpoints, should_stop=stop_after_four, **kw).run()
            raise AssertionError("the first run was not stopped")
        except Stopped:
            pass
        result = small_setup(data_dir, checkpoints=checkpoints, **kw).run()
        assert result.resumed_from == 3, result.resumed_from
    else:
        result = small_setup(data_dir, **kw).run()
    if rank == 0:
        print(json.dumps([p.loss for p in result.history]), flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
