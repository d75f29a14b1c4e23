"""The README saved with every fine-tuned model: where it came from and how it scored."""

from __future__ import annotations

import json
from typing import Any


def _selection(selection: dict[str, Any] | None) -> str:
    """Which step's weights these are, and why."""
    if not selection or selection.get("step") is None:
        return ""
    lines = [f"\nThese are the weights of step {selection['step']}: "]
    best, loss = selection.get("best_step"), selection.get("best_val_loss")
    if selection["select"] == "best" and best is not None:
        lines.append(f"the lowest validation loss ({loss:.4f}, select: best).")
    else:
        lines.append("the last step trained (select: last).")
        if best is not None:
            lines.append(f" The lowest validation loss was {loss:.4f}, at step {best}.")
    if selection.get("early_stopped_at") is not None:
        lines.append(
            f" Early stopping ended training at step {selection['early_stopped_at']}: the "
            f"validation loss had not improved for {selection['evaluations_since_best']} "
            "measurements."
        )
    return "".join(lines) + "\n"


def _lineage(chain: list[dict[str, Any]]) -> str:
    """The models this one was fine-tuned from, nearest first."""
    if not chain:
        return ""
    steps = " ← ".join(f"`{m['name']}`" for m in chain)
    return f"\n## Lineage\n\nContinued from {steps}.\n"


def _merged(source: dict[str, str] | None) -> str:
    if not source:
        return ""
    return (
        f"\nThe LoRA adapter of `{source['name']}` merged into its base's weights; "
        "the evaluation above is the adapter's.\n"
    )


def model_card(name: str, spec: dict[str, Any]) -> str:
    dataset = spec["dataset"]
    kind = "LoRA adapter" if spec["adapter"] else "full fine-tuned weights"
    method = spec["parameters"].get("finetune_type", "SFT")
    lineage = spec.get("lineage") or []
    return f"""# {name}

{kind} fine-tuned by tunelab ({method}) from base model `{spec["base_model"]}`
(`{spec["base_model_uri"]}`), in experiment `{spec["experiment"]}`, task `{spec["task"]}`.

## Data

- dataset: `{dataset["name"]}` ({dataset.get("rows")} rows), id `{dataset["id"]}`
- training file sha256: `{dataset.get("sha256")}`

## Evaluation ({spec["evaluation"]["method"]}, on {spec["evaluation"].get("split")})

| model | score | exact match |
|---|---|---|
| base | {spec["base_score"]:.4f} | |
| fine-tuned | {spec["score"]:.4f} | {spec["evaluation"].get("exact_match", 0):.4f} |

Final training loss {spec["metrics"]["final_loss"]:.4f} after {spec["metrics"]["steps"]} steps.
{_selection(spec.get("selection"))}{_merged(spec.get("merged_from"))}{_lineage(lineage)}
## Serving

Prompts are rendered with the chat template saved beside the weights (`tunelab.json`,
`tokenizer_config.json`); generation stops at {spec.get("stop_tokens")}.

## Parameters

```json
{json.dumps(spec["parameters"], indent=2)}
```
"""
