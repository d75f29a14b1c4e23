"""The built-in evaluation methods: what `GET /api/v1/evaluations` lists and how each scores.

`rouge-bleu` is the seed system's score, kept formula for formula so that results stay
comparable with it. Its scorers (rouge-score, sacrebleu) are in the `gpu` extra, because the
evaluation runs in the GPU worker; they are imported on first use so that the HTTP functions
can list the methods without them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    higher_is_better: bool
    needs_generation: bool


PREFERENCE_ACCURACY = "preference-accuracy"

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "rouge-bleu",
            "Weighted ROUGE (75%) and BLEU (25%) overlap between generated and reference "
            "answers, from 0 to 1.",
            higher_is_better=True,
            needs_generation=True,
        ),
        Method(
            "exact-match",
            "Share of generated answers identical to the reference, ignoring surrounding and "
            "repeated whitespace but not case.",
            higher_is_better=True,
            needs_generation=True,
        ),
        Method(
            PREFERENCE_ACCURACY,
            "Share of held-out preference pairs whose chosen answer the model finds more "
            "likely than the rejected one; DPO tasks are always scored by it.",
            higher_is_better=True,
            needs_generation=False,
        ),
        Method(
            "perplexity",
            "How surprised the model is by the reference answers (exp of the mean token "
            "negative log-likelihood); lower is better.",
            higher_is_better=False,
            needs_generation=False,
        ),
    )
}

ROUGE_WEIGHTS = {"rouge1": 0.35, "rouge2": 0.4, "rougeL": 0.15, "rougeLsum": 0.1}
ROUGE_SHARE = 0.75
BLEU_SHARE = 0.25

# Chinese has no spaces, so each CJK character (Han, kana, Hangul) is a token of its own; any
# other run of letters or digits is a word. Everything else (punctuation, spaces) separates.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")


class _MixedScriptTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9] and so drops Chinese entirely."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


_TOKENIZER = _MixedScriptTokenizer()


@lru_cache(maxsize=1)
def _scorers() -> tuple[Any, Any]:
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics.bleu import BLEU

    # rougeLsum splits summaries on newlines (split_summaries=False): nltk's sentence splitter
    # would need a data download that the GPU worker cannot make.
    rouge = RougeScorer(list(ROUGE_WEIGHTS), tokenizer=_TOKENIZER)
    # Sentence BLEU, not corpus BLEU: the corpus score is a mean of per-pair scores, so each
    # pair needs its own BLEU. Text is pre-tokenized by our tokenizer (hence tokenize="none",
    # which also makes Chinese work), and exp smoothing with effective order keeps a correct
    # short answer, which lacks 3- and 4-grams, from scoring 0.
    bleu = BLEU(tokenize="none", smooth_method="exp", effective_order=True)
    return rouge, bleu


def _rouge_bleu(prediction: str, reference: str) -> dict[str, float]:
    rouge_scorer, bleu_scorer = _scorers()
    rouge = rouge_scorer.score(reference, prediction)
    parts = {name: float(rouge[name].fmeasure) for name in ROUGE_WEIGHTS}
    parts["rouge"] = sum(w * parts[name] for name, w in ROUGE_WEIGHTS.items())
    hyp = " ".join(_TOKENIZER.tokenize(prediction))
    ref = " ".join(_TOKENIZER.tokenize(reference))
    # sacrebleu reports 0-100 and rounding can put a perfect match a hair above 100.
    parts["bleu"] = min(1.0, float(bleu_scorer.sentence_score(hyp, [ref]).score) / 100)
    parts["score"] = ROUGE_SHARE * parts["rouge"] + BLEU_SHARE * parts["bleu"]
    return parts


def _normalise(text: str) -> str:
    return " ".join(text.split())


def score_texts(
    method: str, predictions: Sequence[str], references: Sequence[str]
) -> dict[str, float]:
    """Score generated answers against references; the corpus score is the mean over pairs.

    For `rouge-bleu` each pair gets 0.75 x ROUGE + 0.25 x BLEU, with ROUGE = 0.35 ROUGE-1 +
    0.4 ROUGE-2 + 0.15 ROUGE-L + 0.1 ROUGE-Lsum (F-measures), and "score" and every component
    are means of the per-pair values. As in the seed system, a one-token answer has no bigrams,
    so even a correct one scores below 1. For `exact-match`, "score" is the share of matches.
    """
    if method not in METHODS:
        raise ValueError(f"unknown evaluation method {method!r}; known: {', '.join(METHODS)}")
    if not METHODS[method].needs_generation:
        raise ValueError(f"{method!r} is computed from the model, not from text pairs")
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they pair up"
        )
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    if method == "exact-match":
        hits = sum(
            _normalise(p) == _normalise(r) for p, r in zip(predictions, references, strict=True)
        )
        return {"score": hits / len(predictions)}
    totals: dict[str, float] = {}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, value in _rouge_bleu(prediction, reference).items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: total / len(predictions) for name, total in totals.items()}


def perplexity_from_nll(total_nll: float, tokens: int) -> float:
    """Perplexity from the summed negative log-likelihood (natural log) over `tokens` tokens."""
    if tokens <= 0:
        raise ValueError(f"perplexity needs at least one token, got {tokens}")
    try:
        return math.exp(total_nll / tokens)
    except OverflowError:
        # An untrained or diverged model can average past ~709 nats; that is "infinitely bad",
        # not a crash of the evaluation.
        return math.inf


def better(method: str, a: float, b: float) -> bool:
    """Whether score `a` strictly beats score `b` under `method`."""
    if method not in METHODS:
        raise ValueError(f"unknown evaluation method {method!r}; known: {', '.join(METHODS)}")
    return a > b if METHODS[method].higher_is_better else a < b
