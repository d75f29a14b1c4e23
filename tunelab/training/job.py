"""One fine-tuning task in its own process: `python -m tunelab.training.job SPEC.json`.

The GPU worker (or a Kubernetes Job's pod) starts this with the TUNELAB_* settings of
the platform; with several processes it runs under torchrun. It reads the dataset and
base model, scores the base model, trains with checkpoints in the object store
(resuming from the latest one), saves the fine-tuned model, scores it, and writes its
result under the task's prefix. It talks to its parent through JSON lines on stdout
(rank 0 only) and leaves the database alone.

Exit codes: 0 done; 3 the user's data or parameters cannot be trained (not worth a
retry); 4 stopped on request; anything else a fault worth retrying.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import os
import signal
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from pydantic import BaseModel

from tunelab.conversations import Message, conversations_of
from tunelab.params import Parameters
from tunelab.preferences import Preference, is_preference, preferences_of
from tunelab.processes import die_with_parent
from tunelab.settings import Settings, load_settings
from tunelab.store import ObjectStore, key_from_uri, keys, open_store
from tunelab.training.checkpoints import StoreCheckpoints, upload_dir
from tunelab.training.evaluate import evaluate, evaluate_preferences
from tunelab.training.exits import EXIT_USER_ERROR
from tunelab.training.model_dirs import resolve_model_dir
from tunelab.training.model_io import UnsupportedSetup, load_model, load_tokenizer, save_model
from tunelab.training.native_ops import build_deepspeed_ops
from tunelab.training.template import ConversationTooLong, PromptTooLong, TemplateError
from tunelab.training.trainer import Stopped, Trainer, TrainingData

EXIT_STOPPED = 4
Conversation = list[Message]
log = logging.getLogger("tunelab.training")


class JobSpec(BaseModel):
    task_id: str
    base_model_uri: str
    adapter_uri: str | None = None
    """A LoRA model this task continues: its adapter, trained further on the base."""
    train_uri: str
    eval_uri: str | None = None
    """The dataset's validate split; None: a seeded sample of the training rows."""
    evaluation: str
    params: Parameters
    eval_limit: int = 200
    cpu_threads: int | None = None
    """Threads per process when training on the CPU: the task's CPU request shared by
    its processes (oversubscribed cores slow everyone down)."""


class UserError(Exception):
    """The task's data or parameters are the problem; `code` names which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def emit(kind: str, **fields: Any) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"kind": kind, **fields}), flush=True)


Row = Conversation | Preference
"""What a task trains on: conversations (SFT) or preference pairs (DPO)."""


def read_rows(store: ObjectStore, uri: str, params: Parameters) -> tuple[list[Any], str]:
    """The split's rows as the task trains on them, and the sha256 of its file: for
    DPO its preference pairs; for SFT its conversations (pairs as one-turn ones, a
    preference pair as its prompt with the chosen answer)."""
    raw = store.read_bytes(key_from_uri(uri))  # Parquet needs to seek; S3 bodies cannot
    table, sha256 = pq.read_table(io.BytesIO(raw)), hashlib.sha256(raw).hexdigest()
    if not is_preference(table.column_names):
        if params.finetune_type == "DPO":
            raise UserError(
                "not_preference_data",
                "DPO trains on preference pairs (prompt, chosen, rejected); the dataset "
                "holds answers only.",
            )
        return conversations_of(table), sha256
    pairs = preferences_of(table)
    if params.finetune_type == "DPO":
        return pairs, sha256
    return [p.conversation(p.chosen) for p in pairs], sha256


def held_out(
    spec: JobSpec, store: ObjectStore, train: list[Any]
) -> tuple[list[Any], str, list[Any]]:
    """What is trained on, and the split scored at the end and watched for the
    validation loss while training (its name and conversations).

    The dataset's validate split when it has one; else `validation_fraction` of the
    training conversations, held out (seeded); else a seeded sample of the training
    conversations ("train-sample"), scored but never watched: it is trained on.
    """
    params = spec.params
    if spec.eval_uri:
        scored = read_rows(store, spec.eval_uri, params)[0][: spec.eval_limit]
        return train, "validate", scored
    generator = torch.Generator().manual_seed(params.seed)
    order = torch.randperm(len(train), generator=generator).tolist()
    if params.validation_fraction > 0:
        count = max(1, round(len(train) * params.validation_fraction))
        kept = sorted(order[count:])
        scored = [train[i] for i in sorted(order[:count])][: spec.eval_limit]
        return [train[i] for i in kept], "held-out", scored
    return train, "train-sample", [train[i] for i in sorted(order[: spec.eval_limit])]


def _encode(tokenizer: Any, rows: list[Any], params: Parameters, where: str) -> TrainingData:
    try:
        if params.finetune_type == "DPO":
            return TrainingData.from_preferences(
                tokenizer, rows, params.block_size, params.truncation
            )
        return TrainingData.from_conversations(
            tokenizer, rows, params.block_size, params.truncation
        )
    except PromptTooLong as exc:
        raise UserError(
            "prompt_too_long", f"In the {where}, {exc} (block_size): raise block_size."
        ) from None
    except ConversationTooLong as exc:
        raise UserError(
            "conversation_too_long",
            f"In the {where}, {exc} (block_size), and truncation is refuse: raise "
            "block_size or set truncation to turns.",
        ) from None
    except TemplateError as exc:
        raise UserError("template_error", f"The base model's chat template: {exc}.") from None


def run(spec: JobSpec, settings: Settings) -> dict[str, Any]:
    store = open_store(settings)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(rank, spec.cpu_threads)
    stop = {"asked": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
    try:
        base_dir = resolve_model_dir(spec.base_model_uri, settings, store)
        adapter_dir = (
            resolve_model_dir(spec.adapter_uri, settings, store) if spec.adapter_uri else None
        )
    except FileNotFoundError as exc:
        raise UserError(
            "base_model_unavailable", f"The base model cannot be loaded: {exc}."
        ) from None
    if adapter_dir is not None:
        emit("log", message="continuing the fine-tuned model's adapter (its LoRA shape is kept)")
    if world > 1:
        emit("log", message=f"distributed training, world size {world}")
    tokenizer = load_tokenizer(base_dir)
    params = spec.params
    everything, dataset_sha256 = read_rows(store, spec.train_uri, params)
    train, split, scored = held_out(spec, store, everything)
    watched = split != "train-sample"
    if not watched and (params.select == "best" or params.early_stopping_patience):
        raise UserError(
            "no_validation_set",
            "select=best and early stopping watch a validation loss: give the dataset a "
            "validate split or set validation_fraction.",
        )
    data = _encode(tokenizer, train, params, "dataset")
    validation = _encode(tokenizer, scored, params, "validation split")
    if data.truncated:
        emit(
            "log",
            message=f"{data.truncated} conversations were cut to {params.block_size} "
            "tokens at a turn boundary (block_size)",
        )
    try:
        model = load_model(base_dir, spec.params, device, adapter_dir)
    except ValueError as exc:  # peft: no module matches lora_target_modules, and the like
        raise UserError("bad_parameters", f"The parameters do not fit this model: {exc}.") from None
    base_key = keys.task_file(spec.task_id, "base-score.json")
    if rank == 0 and not store.exists(base_key):
        # Before any step a fresh LoRA adapter adds exactly zero, so this is the base.
        emit("phase", phase="scoring-base")
        store.put_bytes(base_key, json.dumps(score(model, tokenizer, scored, spec)).encode())
    engine: Literal["torch", "deepspeed"] = "torch"
    if world > 1 and settings.distributed_engine == "deepspeed":
        engine = "deepspeed"
    if world > 1:
        emit("log", message=f"distributed engine: {engine}")
    trainer = Trainer(
        model,
        spec.params,
        data,
        device,
        checkpoints=StoreCheckpoints(
            store,
            keys.task_checkpoints(spec.task_id),
            on_saved=lambda step: emit("checkpoint", step=step),
        ),
        on_step=lambda p: emit("progress", **p.as_dict()),
        on_resume=lambda step, history: emit(
            "resumed", step=step, history=[p.as_dict() for p in history]
        ),
        should_stop=lambda: stop["asked"],
        rank=rank,
        world=world,
        engine=engine,
        validation=validation.samples if watched else (),
        best_checkpoints=StoreCheckpoints(store, keys.task_checkpoints(spec.task_id) + "best/"),
    )
    emit("phase", phase="training", total_steps=trainer.total_steps)
    trained = trainer.run()
    result: dict[str, Any] = {}
    final = trainer.trained_model(lambda: load_model(base_dir, spec.params, device, adapter_dir))
    if final is not None:
        model = final
        emit("phase", phase="evaluating")
        final_score = score(model, tokenizer, scored, spec)
        base_score = json.loads(store.read_bytes(base_key))
        serving = {
            "base_model_uri": spec.base_model_uri,
            "chat_template": tokenizer.chat_template,
            "stop_tokens": [tokenizer.eos_token],
        }
        with tempfile.TemporaryDirectory() as tmp:
            save_model(model, tokenizer, Path(tmp))
            # What serving needs beside the weights: the template and stop tokens that
            # training used, so answers are prompted exactly as the model learned.
            (Path(tmp) / "tunelab.json").write_text(json.dumps(serving, indent=2))
            files = upload_dir(store, Path(tmp), keys.model_prefix(spec.task_id))
        result = {
            "score": {**final_score, "split": split, "rows": len(scored)},
            "base_score": base_score,
            "final_loss": trained.final_loss,
            "steps": trained.steps,
            # Every step's, those before a resume included (the checkpoint's history).
            "trained_tokens": sum(p.tokens for p in trained.history),
            "resumed_from": trained.resumed_from,
            "truncated_samples": data.truncated,
            "selection": {
                "select": params.select,
                "step": trained.selected_step,
                "early_stopped_at": trained.early_stopped_at,
                **vars(trained.selection),
            },
            "files": files,
            "adapter": spec.params.peft,
            "dataset_sha256": dataset_sha256,
            **serving,
        }
        store.put_bytes(keys.task_file(spec.task_id, "result.json"), json.dumps(result).encode())
    if world > 1:
        dist.barrier()
    return result


def score(model: Any, tokenizer: Any, scored: list[Any], spec: JobSpec) -> dict[str, Any]:
    """The model's score on the held-out rows: by the experiment's method, or for a DPO
    task by preference accuracy."""
    block_size = spec.params.block_size
    if spec.params.finetune_type == "DPO":
        return evaluate_preferences(model, tokenizer, scored, block_size)
    return evaluate(model, tokenizer, scored, spec.evaluation, block_size)


COLLECTIVE_TIMEOUT = timedelta(hours=3)
"""Ranks wait in a collective while rank 0 alone scores, saves and uploads a model:
for a 7B model that is far over the 10-minute default."""


def init_distributed(engine: str) -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if engine == "deepspeed":
        import deepspeed

        build_deepspeed_ops()  # never hang on a build another process left half-done
        deepspeed.init_distributed(dist_backend=backend, timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)


def _device(rank: int, cpu_threads: int | None) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
        return torch.device("cuda", rank % torch.cuda.device_count())
    # On a CPU, processes that share cores slow each other badly: split them.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(cpu_threads or max(1, (os.cpu_count() or 1) // world))
    return torch.device("cpu")


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    die_with_parent()  # under torchrun: a killed launcher takes its ranks with it
    spec = JobSpec.model_validate_json(Path(sys.argv[1]).read_text())
    settings = load_settings()  # once, for the whole process
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        init_distributed(settings.distributed_engine)
    code = 0
    try:
        result = run(spec, settings)
        emit("result", **result)
    except Stopped as exc:
        emit("stopped", message=str(exc))
        code = EXIT_STOPPED
    except (UserError, UnsupportedSetup) as exc:
        emit("error", code=getattr(exc, "code", "unsupported"), message=str(exc))
        code = EXIT_USER_ERROR
    except torch.OutOfMemoryError:
        emit(
            "error",
            code="out_of_memory",
            message="Training ran out of GPU memory; lower "
            "batch_size or block_size, or turn on peft or quantization.",
        )
        code = EXIT_USER_ERROR
    finally:
        if world > 1 and dist.is_initialized():
            # DDP's reducer must die while the process group still lives (an
            # exception's frames can keep it alive until a later collection): freed
            # after it, gloo's destructor joins a thread that waits for the GIL it holds.
            gc.collect()
            dist.destroy_process_group()
    sys.exit(code)


if __name__ == "__main__":
    main()
