"""The README saved with every fine-tuned model: where it came from and how it scored."""

from __future__ import annotations

import json
from typing import Any


def model_card(name: str, spec: dict[str, Any]) -> str:
    dataset = spec["dataset"]
    kind = "LoRA adapter" if spec["adapter"] else "full fine-tuned weights"
    return f"""# {name}

{kind} fine-tuned by tunelab (SFT) from base model `{spec["base_model"]}`
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

## Serving

Prompts are rendered with the chat template saved beside the weights (`tunelab.json`,
`tokenizer_config.json`); generation stops at {spec.get("stop_tokens")}.

## Parameters

```json
{json.dumps(spec["parameters"], indent=2)}
```
"""
