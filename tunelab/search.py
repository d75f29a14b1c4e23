"""Hyperparameter search: a task's `search` becomes trial tasks, each a task like any
other (progress, logs, model), and the experiment's best task is the best trial.

`grid` is every combination of the space's choices; `random` draws `trials` points,
seeded, from choices and ranges. A search's `parallel` caps how many of its trials
train at once (the scheduler holds the others back).
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.params import Parameters

MAX_TRIALS = 64


class Dimension(BaseModel):
    """One parameter's values: a list to choose from, or a range to draw from."""

    model_config = ConfigDict(extra="forbid")
    choice: list[Any] | None = Field(default=None, min_length=1, max_length=MAX_TRIALS)
    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    int_uniform: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        given = [k for k in ("choice", "uniform", "log_uniform", "int_uniform") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, log_uniform, int_uniform")
        low_high = self.uniform or self.log_uniform or self.int_uniform
        if low_high is not None and not low_high[0] < low_high[1]:
            raise ValueError("a range is [low, high] with low < high")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError("log_uniform needs low > 0")
        return self

    def extremes(self) -> list[Any]:
        """The values that must be valid for every drawn one to be."""
        return list(self.choice or self.uniform or self.log_uniform or self.int_uniform or ())

    def draw(self, rng: random.Random) -> Any:
        if self.choice is not None:
            return rng.choice(self.choice)
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        if self.log_uniform is not None:
            low, high = self.log_uniform
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        assert self.int_uniform is not None
        return rng.randint(*self.int_uniform)


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["grid", "random"]
    space: dict[str, Dimension] = Field(min_length=1)
    trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    """random: how many points to draw (required); grid: every point, at most this many."""
    parallel: int = Field(default=1, ge=1, le=MAX_TRIALS)
    """How many trials train at once."""
    metric: Literal["score"] = "score"
    """What makes a trial the best: the experiment's evaluation score."""
    seed: int = Field(default=0, ge=0)

    def problems(self, base: dict[str, Any], at: str) -> list[dict[str, Any]]:
        """What is wrong with the search for a task whose other parameters are `base`,
        each problem naming its field under `at` (`tasks[0].search.space.lora_rank`)."""
        here = f"{at}.search"
        found = []
        for name, dimension in self.space.items():
            field = f"{here}.space.{name}"
            if name not in Parameters.model_fields:
                found.append({"field": field, "message": "not a training parameter"})
                continue
            if self.method == "grid" and dimension.choice is None:
                found.append({"field": field, "message": "a grid takes choices only"})
                continue
            for value in dimension.extremes():
                try:
                    Parameters.model_validate({**base, name: value})
                except ValidationError as exc:
                    message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    found.append({"field": field, "message": f"{value!r}: {message}"})
                    break
        if self.method == "random" and self.trials is None:
            found.append({"field": f"{here}.trials", "message": "a random search needs trials"})
        if self.method == "grid" and not found:
            points = math.prod(len(d.choice or ()) for d in self.space.values())
            cap = self.trials or MAX_TRIALS
            if points > cap:
                found.append({"field": f"{here}.space", "message": f"{points} points, over {cap}"})
        return found

    def points(self) -> list[dict[str, Any]]:
        """Each trial's parameter values, in order."""
        names = list(self.space)
        if self.method == "grid":
            product = itertools.product(*(self.space[n].choice or () for n in names))
            return [dict(zip(names, values, strict=True)) for values in product]
        rng = random.Random(self.seed)
        return [{n: self.space[n].draw(rng) for n in names} for _ in range(self.trials or 0)]


def trial_name(task: str, number: int) -> str:
    """`task-3`, within a DNS label's 63 characters."""
    suffix = f"-{number}"
    return task[: 63 - len(suffix)].rstrip("-") + suffix
