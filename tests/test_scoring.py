"""Evaluation methods: the seed system's rouge-bleu formula, exact match, perplexity."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tunelab.scoring import METHODS, better, perplexity_from_nll, score_texts

TEXT_METHODS = ["rouge-bleu", "exact-match"]


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_identical_texts_score_one(method: str) -> None:
    texts = ["the model converged after three epochs", "训练在三个周期后收敛了"]
    assert score_texts(method, texts, texts)["score"] == pytest.approx(1.0)


def test_texts_equal_up_to_case_and_punctuation_score_one_on_every_rouge_bleu_component() -> None:
    result = score_texts(
        "rouge-bleu", ["A longer answer, with commas!"], ["a longer answer with commas"]
    )
    assert result == pytest.approx(
        {k: 1.0 for k in ("score", "rouge1", "rouge2", "rougeL", "rougeLsum", "rouge", "bleu")}
    )


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_completely_different_texts_score_zero(method: str) -> None:
    assert score_texts(method, ["apples and oranges"], ["北京欢迎你"])["score"] == 0.0


def test_a_known_english_pair_matches_hand_computed_rouge() -> None:
    # Prediction: the cat sat (3 tokens, once lowercased and the full stop dropped).
    # Reference:  the cat sat on the mat (6 tokens).
    result = score_texts("rouge-bleu", ["The cat sat."], ["the cat sat on the mat"])
    # ROUGE-1: 3 matches, P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3.
    assert result["rouge1"] == pytest.approx(2 / 3)
    # ROUGE-2: 2 of 2 predicted bigrams in the reference's 5, P = 1, R = 2/5, F = 4/7.
    assert result["rouge2"] == pytest.approx(4 / 7)
    # LCS is 3 tokens long: same P and R as ROUGE-1; one line, so Lsum equals L.
    assert result["rougeL"] == pytest.approx(2 / 3)
    assert result["rougeLsum"] == pytest.approx(2 / 3)
    # BLEU: every n-gram up to the hypothesis length (3) matches, brevity penalty e^(1 - 6/3).
    assert result["bleu"] == pytest.approx(math.exp(-1))


def test_a_second_english_pair_matches_hand_computed_rouge() -> None:
    result = score_texts("rouge-bleu", ["the cat sat on the mat"], ["the cat lay on the mat"])
    # 5 of 6 unigrams shared (the x2, cat, on, mat); 3 of 5 bigrams (the cat, on the, the mat).
    assert result["rouge1"] == pytest.approx(5 / 6)
    assert result["rouge2"] == pytest.approx(3 / 5)


def test_chinese_texts_are_scored_per_character() -> None:
    # 今 天 天 气 很 好 against 今 天 天 气 不 错: 4 of 6 characters shared, F = 4/6.
    result = score_texts("rouge-bleu", ["今天天气很好。"], ["今天天气不错！"])
    assert result["rouge1"] == pytest.approx(4 / 6)
    # 今天, 天天, 天气 of 5 bigrams each side.
    assert result["rouge2"] == pytest.approx(3 / 5)
    assert 0.0 < result["score"] < 1.0
    assert 0.0 < result["bleu"] < 1.0


def test_mixed_chinese_and_latin_text_splits_characters_and_lowercases_words() -> None:
    result = score_texts("rouge-bleu", ["用GPU训练模型"], ["用 gpu 训练 模型"])
    assert result["score"] == pytest.approx(1.0)


def test_rouge_and_bleu_weights_are_applied() -> None:
    result = score_texts(
        "rouge-bleu",
        ["The cat sat.", "今天天气很好"],
        ["the cat sat on the mat", "今天天气不错"],
    )
    rouge = (
        0.35 * result["rouge1"]
        + 0.4 * result["rouge2"]
        + 0.15 * result["rougeL"]
        + 0.1 * result["rougeLsum"]
    )
    assert result["rouge"] == pytest.approx(rouge)
    assert result["score"] == pytest.approx(0.75 * rouge + 0.25 * result["bleu"])
    # The components differ, so a wrong weight would show.
    assert len({round(result[k], 6) for k in ("rouge1", "rouge2", "bleu")}) == 3


def test_the_corpus_score_is_the_mean_of_the_pair_scores() -> None:
    pairs = [("The cat sat.", "the cat sat on the mat"), ("今天天气很好", "今天天气不错")]
    singles = [score_texts("rouge-bleu", [p], [r])["score"] for p, r in pairs]
    both = score_texts("rouge-bleu", [p for p, _ in pairs], [r for _, r in pairs])
    assert both["score"] == pytest.approx(sum(singles) / 2)


def test_rouge_lsum_splits_summaries_on_newlines() -> None:
    # As one line the LCS is 2 tokens (a b or c d); line by line, every token is matched.
    result = score_texts("rouge-bleu", ["c d\na b"], ["a b\nc d"])
    assert result["rougeL"] == pytest.approx(0.5)
    assert result["rougeLsum"] == pytest.approx(1.0)


def test_exact_match_normalises_whitespace_but_not_case() -> None:
    predictions = ["  Paris is\n the   capital ", "Paris", "北京　欢迎你"]
    references = ["Paris is the capital", "paris", "北京 欢迎你"]
    assert score_texts("exact-match", predictions, references)["score"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_mismatched_lengths_are_refused(method: str) -> None:
    with pytest.raises(ValueError, match="pair up"):
        score_texts(method, ["a", "b"], ["a"])


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_empty_input_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match="nothing to score"):
        score_texts(method, [], [])


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown evaluation method 'bleurt'"):
        score_texts("bleurt", ["a"], ["a"])
    with pytest.raises(ValueError, match="unknown evaluation method"):
        better("bleurt", 1.0, 0.0)


def test_perplexity_is_not_scored_from_text_pairs() -> None:
    with pytest.raises(ValueError, match="computed from the model"):
        score_texts("perplexity", ["a"], ["a"])


def test_perplexity_is_the_exponential_of_the_mean_nll() -> None:
    assert perplexity_from_nll(0.0, 10) == 1.0
    assert perplexity_from_nll(10 * math.log(4.0), 10) == pytest.approx(4.0)
    assert perplexity_from_nll(1e6, 1) == math.inf


@pytest.mark.parametrize("tokens", [0, -1])
def test_perplexity_needs_tokens(tokens: int) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        perplexity_from_nll(1.0, tokens)


def test_better_respects_higher_is_better() -> None:
    assert better("rouge-bleu", 0.6, 0.5)
    assert not better("rouge-bleu", 0.5, 0.6)
    assert better("exact-match", 1.0, 0.0)
    assert better("perplexity", 3.0, 7.5)
    assert not better("perplexity", 7.5, 3.0)
    assert not better("perplexity", 3.0, 3.0)


def test_the_listed_methods_are_described() -> None:
    assert set(METHODS) == {"rouge-bleu", "exact-match", "preference-accuracy", "perplexity"}
    assert all(name == m.name and m.description.endswith(".") for name, m in METHODS.items())
    assert sorted(m.name for m in METHODS.values() if not m.needs_generation) == [
        "perplexity",
        "preference-accuracy",
    ]
    assert [m.name for m in METHODS.values() if not m.higher_is_better] == ["perplexity"]


def test_listing_methods_does_not_need_the_gpu_extras() -> None:
    # The HTTP functions list METHODS but do not install rouge-score or sacrebleu.
    code = (
        "import sys; import tunelab.scoring as s; s.METHODS; "
        "assert not {'rouge_score', 'sacrebleu', 'nltk'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
