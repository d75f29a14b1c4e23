"""Run under torchrun by tests/test_training.py: a few steps of a small model with the
trainer over however many processes torchrun gives, printing the losses as JSON.

    python -m torch.distributed.run --nproc_per_node=N -m tests.training_ddp DATA_DIR
        ENGINE [STORE_DIR]

ENGINE is torch or deepspeed, with -zero3 for ZeRO-3, or with -dpo for DPO on
preference pairs.

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

from tests.test_training import small_model, small_setup
from tunelab.conversations import from_pair
from tunelab.store.local import LocalStore
from tunelab.synthetic import qa_pairs
from tunelab.training.basemodel import tiny_tokenizer
from tunelab.training.checkpoints import StoreCheckpoints
from tunelab.training.evaluate import answer_perplexity
from tunelab.training.job import init_distributed
from tunelab.training.trainer import Stopped, TrainResult


def main() -> None:
    data_dir, engine = sys.argv[1], sys.argv[2]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        init_distributed("deepspeed" if engine == "deepspeed" else "ddp")
    torch.set_num_threads(1)
    train(data_dir, engine)
    if world > 1:
        # The trainer (and DDP's reducer) died with train()'s frame while the process
        # group still lived. Freed after it instead, gloo's destructor joins a thread
        # that waits for the GIL the destructor holds: a hang at exit, seen under load.
        dist.barrier()
        dist.destroy_process_group()


def train(data_dir: str, engine: str) -> None:
    dpo = engine.endswith("-dpo")
    engine = engine.removesuffix("-dpo")
    zero_stage = 3 if engine.endswith("zero3") else 2
    engine = engine.removesuffix("-zero3")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    tokenizer = tiny_tokenizer(Path(data_dir))
    kw = {"rank": rank, "world": world, "engine": engine, "zero_stage": zero_stage, "dpo": dpo}
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
        trainer = small_setup(data_dir, checkpoints=checkpoints, **kw)
        result = trainer.run()
        assert result.resumed_from == 3, result.resumed_from
    else:
        trainer = small_setup(data_dir, **kw)
        result = trainer.run()
    # The trained weights as a saved model would have them (gathered under ZeRO-3),
    # scored on the training data: the same for every way of training.
    final = trainer.trained_model(lambda: small_model(tokenizer))
    if rank == 0 and dpo:
        margins = [(p.rewards or {})["margins"] for p in result.history]
        losses = [p.loss for p in result.history]
        print(json.dumps({"losses": losses, "margins": margins}), flush=True)
    elif rank == 0:
        assert final is not None
        conversations = [from_pair(q, a) for q, a in qa_pairs(24, seed=9)]
        ppl = answer_perplexity(final, tokenizer, conversations, 128)
        print(json.dumps({"losses": [p.loss for p in result.history], "ppl": ppl}), flush=True)


if __name__ == "__main__":
    main()
