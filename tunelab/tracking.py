"""Experiment tracking: each task mirrored into an MLflow run (TUNELAB_MLFLOW_URI).

The run lives in an MLflow experiment named `<workspace>/<experiment>`, holds the task's
parameters, every step's metrics (loss, learning rate, tokens/s, validation loss, DPO
rewards), the final and base scores, and tags for the dataset, base model, workspace,
task and the model it made, with a link to it in tunelab. A resumed task (another
attempt, on another worker) finds its run again by its `tunelab.task_id` tag.

The tracking server is never in training's way: calls go out from a thread of their
own through a bounded queue, each is retried a few times and then dropped (logged),
and a full queue drops new points rather than waiting. MLflow's client is
imported only when tracking is on (the `tracking` extra, mlflow-skinny).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tunelab.tracking")

MAX_PENDING = 10_000
"""Calls waiting for the server; past it new points are dropped."""
ATTEMPTS = 3
RETRY_S = 1.0
PAUSE_S = 60.0
"""After a call is dropped the server counts as down: calls in this time are dropped
at once, so a dead server costs no training its retries over and over."""
Call = Callable[[Any, str], None]
"""One call to MLflow's client, given the client and the run's id."""


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"rewards": {"chosen": 1}}` as `{"rewards/chosen": 1}`: MLflow's names."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """One task's run, fed from the training relay; every method returns at once."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        task_id: str,
        params: dict[str, Any],
        tags: dict[str, str],
    ) -> None:
        # The client's own retries wait minutes between tries; ours are bounded.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri, self.experiment, self.run_name, self.task_id = uri, experiment, run_name, task_id
        self.params, self.tags = params, tags
        self.calls: queue.Queue[Call | None] = queue.Queue(MAX_PENDING)
        self.dropped, self.last_step, self.paused_until = 0, 0, 0.0
        self.thread = threading.Thread(target=self._work, name="mlflow", daemon=True)
        self.thread.start()

    # ---- what the relay calls -----------------------------------------------------------

    def step(self, step: int, values: dict[str, Any]) -> None:
        self.last_step = max(self.last_step, step)
        numbers = {k: float(v) for k, v in flat(values).items() if isinstance(v, int | float)}
        self._put(lambda client, run: _log_metrics(client, run, numbers, step))

    def result(self, values: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        """Final figures (scores), at the last step, and tags known only at the end
        (the model)."""
        self.step(self.last_step, values)
        if tags:
            from_tags = dict(tags)
            self._put(lambda client, run: _set_tags(client, run, from_tags))

    def close(self, status: str | None, timeout_s: float = 30.0) -> None:
        """End the run (FINISHED, FAILED or KILLED; None leaves it running, for the
        task's next attempt) and wait a bounded time for the calls still queued."""
        if status is not None:
            self._put(lambda client, run: client.set_terminated(run, status))
        self.calls.put(None)
        self.thread.join(timeout_s)
        if self.thread.is_alive() or self.dropped:
            log.warning("tracking %s: %d call(s) dropped", self.task_id, self.dropped)

    # ---- the thread that talks to MLflow ---------------------------------------------------

    def _put(self, call: Call) -> None:
        try:
            self.calls.put_nowait(call)
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        client, run_id = None, None
        while (call := self.calls.get()) is not None:
            if time.monotonic() < self.paused_until:
                self.dropped += 1
                continue
            for attempt in range(ATTEMPTS):
                try:
                    if client is None:
                        from mlflow.tracking import MlflowClient

                        client = MlflowClient(tracking_uri=self.uri)
                    if run_id is None:
                        run_id = self._open(client)
                    call(client, run_id)
                    break
                except Exception as exc:  # the server's trouble is never training's
                    log.warning("tracking %s: %s (try %d)", self.task_id, exc, attempt + 1)
                    time.sleep(RETRY_S * 2**attempt)
            else:
                self.dropped += 1
                self.paused_until = time.monotonic() + PAUSE_S

    def _open(self, client: Any) -> str:
        """The task's run: found by its tag when an earlier attempt made it, else new
        (in the experiment, made if need be), with its parameters and tags."""
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
        runs = client.search_runs(
            [experiment_id], f"tags.`tunelab.task_id` = '{self.task_id}'", max_results=1
        )
        if runs:
            return str(runs[0].info.run_id)
        from mlflow.entities import Param, RunTag

        run = client.create_run(
            experiment_id,
            run_name=self.run_name,
            tags={"tunelab.task_id": self.task_id, **self.tags},
        )
        run_id = str(run.info.run_id)
        params = [Param(k, str(v)[:6000]) for k, v in flat(self.params).items()]
        client.log_batch(run_id, params=params, tags=[RunTag("mlflow.source.name", "tunelab")])
        return run_id


def _log_metrics(client: Any, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])


def _set_tags(client: Any, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
