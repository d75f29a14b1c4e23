"""Run under torchrun by tests/test_training.py: a few steps of a tiny model with the
trainer over however many processes torchrun gives, printing the losses as JSON."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from tests.test_training import small_setup

if __name__ == "__main__":
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    trainer = small_setup(sys.argv[1], rank=int(os.environ.get("RANK", "0")), world=world)
    result = trainer.run()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps([p.loss for p in result.history]))
    if world > 1:
        dist.destroy_process_group()
