"""Scoring a model on held-out conversations: the scored answer is each conversation's
last assistant turn, given everything before it. Greedy answers for text methods,
perplexity on the trained tokens. Exact match is always reported beside the chosen
method, because "does it answer the training questions" is what users check first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.conversations import Message, split_last_answer
from tunelab.preferences import Preference
from tunelab.scoring import METHODS, PREFERENCE_ACCURACY, perplexity_from_nll, score_texts
from tunelab.training.objectives import encode_preferences, forward_logits, sequence_logps
from tunelab.training.packing import pack
from tunelab.training.template import IGNORE, encode_conversation, render_history

Conversation = Sequence[Message]

GENERATION_BATCH = 32


@torch.no_grad()
def generate_answers(
    model: Any, tokenizer: Any, histories: Sequence[Conversation], max_new_tokens: int
) -> list[str]:
    """Greedy answers to each conversation so far, stopping at end of turn."""
    model.eval()
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        for start in range(0, len(histories), GENERATION_BATCH):
            prompts = [
                render_history(tokenizer, h) for h in histories[start : start + GENERATION_BATCH]
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train()
    return answers


@torch.no_grad()
def answer_perplexity(
    model: Any, tokenizer: Any, conversations: Sequence[Conversation], block_size: int
) -> float:
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        samples = [encode_conversation(tokenizer, c, block_size) for c in conversations]
        for start in range(0, len(samples), GENERATION_BATCH):
            batch = pack(samples[start : start + GENERATION_BATCH])
            logits = model(
                input_ids=batch.input_ids.to(device),
                position_ids=batch.position_ids.to(device),
                use_cache=False,
            ).logits
            labels = batch.labels.to(device).view(-1)
            total += float(
                F.cross_entropy(
                    logits.view(-1, logits.size(-1)).float(),
                    labels,
                    ignore_index=IGNORE,
                    reduction="sum",
                )
            )
            count += int((labels != IGNORE).sum())
    finally:
        model.train()
    return perplexity_from_nll(total, count)


def evaluate(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    method: str,
    block_size: int,
) -> dict[str, Any]:
    """`{"method", "score", "exact_match", ...components}` on `conversations`."""
    histories, references = zip(*(split_last_answer(list(c)) for c in conversations), strict=True)
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in references)
    answers = generate_answers(model, tokenizer, histories, max_new_tokens=longest + 8)
    result: dict[str, Any] = {"method": method}
    if METHODS[method].needs_generation:
        result.update(score_texts(method, answers, list(references)))
    else:
        result["score"] = answer_perplexity(model, tokenizer, conversations, block_size)
    result["exact_match"] = score_texts("exact-match", answers, list(references))["score"]
    result["examples"] = [
        {"question": h[-1]["content"], "turns": len(h), "reference": r, "answer": a}
        for h, r, a in list(zip(histories, references, answers, strict=True))[:5]
    ]
    return result


@torch.no_grad()
def preference_accuracy(
    model: Any, tokenizer: Any, pairs: Sequence[Preference], block_size: int
) -> float:
    """Share of `pairs` whose chosen answer has the higher log-likelihood."""
    model.eval()
    wins = 0
    try:
        encoded = encode_preferences(tokenizer, pairs, block_size, "turns")
        for start in range(0, len(encoded), GENERATION_BATCH):
            chunk = encoded[start : start + GENERATION_BATCH]
            batch = pack([s for pair in chunk for s in (pair.chosen, pair.rejected)])
            sums, _ = sequence_logps(forward_logits(model, batch), batch)
            wins += int((sums[0::2] > sums[1::2]).sum())
    finally:
        model.train()
    return wins / max(len(pairs), 1)


def evaluate_preferences(
    model: Any, tokenizer: Any, pairs: Sequence[Preference], block_size: int
) -> dict[str, Any]:
    """A DPO task's score: preference accuracy, and how often a greedy answer is the
    chosen answer (or the rejected one) word for word."""
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in chosen)
    answers = generate_answers(model, tokenizer, [p.prompt for p in pairs], longest + 8)
    return {
        "method": PREFERENCE_ACCURACY,
        "score": preference_accuracy(model, tokenizer, pairs, block_size),
        "exact_match": score_texts("exact-match", answers, chosen)["score"],
        "rejected_match": score_texts("exact-match", answers, rejected)["score"],
        "examples": [
            {
                "question": p.prompt[-1]["content"],
                "reference": p.chosen,
                "rejected": p.rejected,
                "answer": a,
            }
            for p, a in list(zip(pairs, answers, strict=True))[:5]
        ],
    }
