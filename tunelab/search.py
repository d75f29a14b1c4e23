"""Hyperparameter search: a task's `search` becomes trial tasks, each a task like any
other (progress, logs, model), and the experiment's best task is the best trial.

`grid` is every combination of the space's choices; `random` draws `trials` points,
seeded, from choices and ranges; `tpe` asks Optuna's TPE sampler for each next point as
trials end, so later trials follow the scores of earlier ones. A search's `parallel`
caps how many of its trials train at once (the scheduler holds the others back).

TPE's history is the experiment's own trial tasks (their values and scores, in the
platform's database): each ask replays it into a fresh in-memory study, so no second
store has to agree with the tasks, and a redelivered event asks the same question.
"""

from __future__ import annotations

import itertools
import math
import random
import warnings
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

    def distribution(self) -> Any:
        """The dimension as Optuna describes it."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.choice is not None:
            return CategoricalDistribution(self.choice)
        if self.int_uniform is not None:
            return IntDistribution(*self.int_uniform)
        low, high = self.uniform or self.log_uniform or (0.0, 1.0)
        return FloatDistribution(low, high, log=self.log_uniform is not None)

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
    method: Literal["grid", "random", "tpe"]
    space: dict[str, Dimension] = Field(min_length=1)
    trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    """random and tpe: how many trials (required); grid: every point, at most this many."""
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
        if self.method in ("random", "tpe") and self.trials is None:
            found.append(
                {"field": f"{here}.trials", "message": f"a {self.method} search needs trials"}
            )
        if self.method == "grid" and not found:
            points = math.prod(len(d.choice or ()) for d in self.space.values())
            cap = self.trials or MAX_TRIALS
            if points > cap:
                found.append({"field": f"{here}.space", "message": f"{points} points, over {cap}"})
        return found

    def points(self, higher_is_better: bool = True) -> list[dict[str, Any]]:
        """Each trial's parameter values, in order; for tpe, the first `parallel` only
        (the others are asked for as trials end)."""
        names = list(self.space)
        if self.method == "tpe":
            first: list[dict[str, Any]] = []
            for number in range(1, min(self.parallel, self.trials or 0) + 1):
                first.append(self.ask([], first, number, higher_is_better))
            return first
        if self.method == "grid":
            product = itertools.product(*(self.space[n].choice or () for n in names))
            return [dict(zip(names, values, strict=True)) for values in product]
        rng = random.Random(self.seed)
        return [{n: self.space[n].draw(rng) for n in names} for _ in range(self.trials or 0)]

    def ask(
        self,
        finished: list[tuple[dict[str, Any], float | None]],
        pending: list[dict[str, Any]],
        number: int,
        higher_is_better: bool,
    ) -> dict[str, Any]:
        """The values of trial `number` of a tpe search: TPE's suggestion given the
        finished trials (values and score; None for one that failed) and those still
        training. The first few (a third of the trials, at most ten) are drawn at
        random, as TPE needs some points before it can model the space."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # constant_liar is marked experimental; it is what parallel trials need.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        distributions = {name: d.distribution() for name, d in self.space.items()}
        sampler = optuna.samplers.TPESampler(
            # Each trial its own seed: a fresh study's draws would repeat otherwise.
            seed=self.seed * 1_000_003 + number,
            n_startup_trials=max(1, min(10, (self.trials or 0) // 3)),
            constant_liar=True,  # trials still training count as likely-poor
        )
        study = optuna.create_study(
            direction="maximize" if higher_is_better else "minimize", sampler=sampler
        )
        TrialState = optuna.trial.TrialState
        for values, score in finished:
            study.add_trial(
                optuna.trial.create_trial(
                    params=values,
                    distributions=distributions,
                    value=score,
                    state=TrialState.COMPLETE if score is not None else TrialState.FAIL,
                )
            )
        for values in pending:
            study.add_trial(
                optuna.trial.create_trial(
                    params=values, distributions=distributions, state=TrialState.RUNNING
                )
            )
        asked: dict[str, Any] = study.ask(distributions).params
        return asked


def trial_name(task: str, number: int) -> str:
    """`task-3`, within a DNS label's 63 characters."""
    suffix = f"-{number}"
    return task[: 63 - len(suffix)].rstrip("-") + suffix
