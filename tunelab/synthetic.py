"""Synthetic bilingual question/answer facts, for the built-in test-size base model's
pre-training and for tests and benchmarks that need a dataset it has never seen.

Every fact is random (an invented name and its attribute), so answering one is pure
recall: a model that answers it learned it from the data.
"""

from __future__ import annotations

import random

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "te",
    "su",
    "no",
    "vi",
    "da",
    "pe",
    "zo",
    "lu",
    "ne",
    "ha",
    "gi",
    "bo",
    "fa",
    "ry",
    "xo",
    "qu",
]
_HANZI = "安白陈丁方高韩金林明宁平秋荣森天文夏星阳永云张周朱"


def _name(rng: random.Random, language: str) -> str:
    if language == "zh":
        return "".join(rng.choice(_HANZI) for _ in range(3))
    return "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()


def _fact(rng: random.Random, name: str, language: str) -> tuple[str, str]:
    # Answers are drawn from thousands of values, so guessing one is next to impossible.
    kind = rng.randrange(3)
    code = rng.randrange(1000, 10000)
    room = f"{rng.choice('ABCDEFGH')}{rng.randrange(100, 1000)}"
    if language == "zh":
        if kind == 0:
            return f"{name}的编号是多少？", f"{name}的编号是{code}。"
        if kind == 1:
            return f"{name}住在哪个房间？", f"{name}住在{room}房间。"
        return f"{name}的电话分机是多少？", f"{name}的分机是{code}。"
    if kind == 0:
        return f"What is the code of {name}?", f"The code of {name} is {code}."
    if kind == 1:
        return f"Which room is {name} in?", f"{name} is in room {room}."
    return f"What is the extension of {name}?", f"The extension of {name} is {code}."


def qa_pairs(
    count: int, seed: int, languages: tuple[str, ...] = ("en", "zh")
) -> list[tuple[str, str]]:
    """`count` facts about distinct invented names, alternating `languages`."""
    rng = random.Random(seed)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        language = languages[len(pairs) % len(languages)]
        name = _name(rng, language)
        if name in seen:
            continue
        seen.add(name)
        pairs.append(_fact(rng, name, language))
    return pairs


def preference_pairs(count: int, seed: int) -> list[tuple[str, str, str]]:
    """`count` (question, chosen, rejected) facts in English: the chosen answer is terse
    (`Kalomi: 1234.`), the rejected one the full sentence the built-in base model was
    pre-trained to give, with the same value. A style, so DPO can teach it and held-out
    pairs can measure whether it was learned."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    while len(out) < count:
        name = _name(rng, "en")
        if name in seen:
            continue
        seen.add(name)
        question, answer = _fact(rng, name, "en")
        value = answer.rsplit(" ", 1)[1].rstrip(".")
        out.append((question, f"{name}: {value}.", answer))
    return out
