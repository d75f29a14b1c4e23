"""Merging a LoRA model's adapter into its base: a full model of its own, registered
with its lineage and deployable like any full model.

The base is loaded in its own dtype (a 7B model in bf16 is about 14 GB; fp32 would be
twice that), the adapter merged with PEFT's `merge_and_unload`, and the result saved
with the adapter's tokenizer and serving file (`tunelab.json`: the chat template and
stop tokens it was trained with) under the merged model's own prefix.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab.context import Context
from tunelab.db.tables import Model
from tunelab.events.model import ModelMergeRequested, ModelRegistered, ModelRegisteredData
from tunelab.model_card import model_card
from tunelab.store import keys
from tunelab.training.checkpoints import upload_dir
from tunelab.training.model_dirs import resolve_model_dir
from tunelab.training.model_io import load_tokenizer, save_model


def merged_weights(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """The base with the adapter merged into it, saved in `out` as a full model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    save_model(merged, load_tokenizer(adapter_dir), out)
    if (adapter_dir / "tunelab.json").exists():
        shutil.copy(adapter_dir / "tunelab.json", out / "tunelab.json")


def merge(ctx: Context, event: ModelMergeRequested) -> ModelRegistered | None:
    """Make the merged model asked for; its `model.registered`, or None when there is
    nothing to do (deleted meanwhile, or already made by an earlier delivery)."""
    data = event.data
    with ctx.db.session() as session:
        target, source = session.get(Model, data.model_id), session.get(Model, data.source_id)
        if target is None or target.status == "ready":
            return None
        if source is None:
            target.status = "failed"
            target.error = {"code": "source_gone", "message": f"{data.source!r} was deleted."}
            return None
        source_spec: dict[str, Any] = dict(source.spec or {})
        source_uri = source.uri
    base_dir = resolve_model_dir(source_spec["base_model_uri"], ctx.settings, ctx.store)
    adapter_dir = resolve_model_dir(source_uri, ctx.settings, ctx.store)
    prefix = keys.model_prefix(data.model_id)
    with tempfile.TemporaryDirectory(prefix="tunelab-merge-") as tmp:
        merged_weights(base_dir, adapter_dir, Path(tmp))
        files = upload_dir(ctx.store, Path(tmp), prefix)
    spec = {
        **source_spec,
        "adapter": False,
        "merged_from": {"name": data.source, "id": data.source_id},
        "lineage": [{"name": data.source, "id": data.source_id}, *source_spec.get("lineage", [])],
        "files": files,
    }
    ctx.store.put_bytes(f"{prefix}README.md", model_card(data.name, spec).encode())
    with ctx.db.session() as session:
        target = session.get(Model, data.model_id, with_for_update=True)
        if target is None:  # deleted while merging: leave nothing behind
            ctx.store.delete_prefix(prefix)
            return None
        target.spec, target.status, target.created_at = spec, "ready", datetime.now(UTC)
    return ModelRegistered.following(
        event,
        data=ModelRegisteredData(
            model_id=data.model_id,
            name=data.name,
            kind="finetuned",
            base_model=source_spec.get("base_model"),
            experiment=source_spec.get("experiment"),
            task=source_spec.get("task"),
        ),
    )


def fail(ctx: Context, event: ModelMergeRequested, error: str) -> None:
    with ctx.db.session() as session:
        target = session.get(Model, event.data.model_id)
        if target is not None and target.status == "merging":
            target.status = "failed"
            target.error = {"code": "merge_failed", "message": f"Merging failed: {error}"}
