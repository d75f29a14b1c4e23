"""The scheduler as a plain function over real SQLite and a StubBroker queue: tasks start
in submission order while they fit the cluster, and wait `queued` otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunelab.context import Context
from tunelab.db import Database
from tunelab.db.tables import (
    EventRecord,
    Experiment,
    FineTuningJob,
    Model,
    Service,
    Task,
    Workspace,
)
from tunelab.events.broker import queue_name
from tunelab.events.bus import EventBus
from tunelab.settings import Settings
from tunelab.store.local import LocalStore

CLUSTER = """
[clusters.local]
cpu = "4"
memory = "16Gi"
gpus = { a100 = 2 }
"""


@pytest.fixture
def ctx(stub_broker: Any, tmp_path: Path) -> Iterator[Context]:
    (tmp_path / "clusters.toml").write_text(CLUSTER)
    settings = Settings(data_dir=tmp_path, clusters_file=tmp_path / "clusters.toml")
    db = Database(settings.effective_database_url)
    db.migrate()
    bus = EventBus(stub_broker, db, lambda worker: queue_name(settings, worker))
    yield Context(settings, db, LocalStore(tmp_path / "objects"), bus)
    stub_broker.flush_all()
    db.dispose()


def schedule(ctx: Context, cluster: str) -> list[str]:
    # Actor modules bind to a broker when imported: the stub broker fixture comes first.
    from tunelab.lifecycle.experiments import schedule

    return schedule(ctx, cluster)


def finish_experiment(ctx: Context, experiment_id: str) -> None:
    from tunelab.lifecycle.experiments import finish_experiment

    finish_experiment(ctx, experiment_id)


def add_experiment(ctx: Context, name: str, *tasks: dict[str, Any]) -> str:
    with ctx.db.session() as session:
        workspace = session.query(Workspace).first()
        if workspace is None:
            workspace = Workspace(name="acme")
            session.add(workspace)
            session.flush()
        experiment = Experiment(
            workspace_id=workspace.id,
            name=name,
            spec={"cluster": "local", "namespace": "default", "evaluation": "exact-match"},
        )
        session.add(experiment)
        session.flush()
        for i, t in enumerate(tasks):
            session.add(
                Task(
                    workspace_id=workspace.id,
                    experiment_id=experiment.id,
                    name=t["name"],
                    position=i,
                    cluster="local",
                    spec={
                        "resources": {
                            "cpu": {"request": t.get("cpu", 1), "limit": 4},
                            "memory": {"request": 2**30, "limit": 2**31},
                        },
                        "compute": {
                            "gpu_type": t.get("gpu_type", "cpu"),
                            "gpu_count": t.get("gpus", 1),
                        },
                        **({"trial": t["trial"]} if "trial" in t else {}),
                        "parameters": t.get("parameters", {}),
                    },
                )
            )
        return str(experiment.id)


def statuses(ctx: Context) -> dict[str, str]:
    with ctx.db.session() as session:
        return {t.name: t.status for t in session.query(Task)}


def end(ctx: Context, task: str, status: str = "succeeded", score: float = 0.5) -> None:
    with ctx.db.session() as session:
        row = session.query(Task).filter_by(name=task).one()
        row.status, row.score = status, {"score": score}


def test_tasks_start_while_they_fit_and_the_rest_wait_queued(ctx: Context) -> None:
    add_experiment(
        ctx, "first", {"name": "a", "cpu": 2}, {"name": "b", "cpu": 2}, {"name": "c", "cpu": 2}
    )
    assert schedule(ctx, "local") == ["a", "b"]
    assert statuses(ctx) == {"a": "training", "b": "training", "c": "queued"}
    assert schedule(ctx, "local") == []  # nothing freed, nothing new
    end(ctx, "a")
    assert schedule(ctx, "local") == ["c"]


def test_gpus_are_counted_per_type(ctx: Context) -> None:
    add_experiment(
        ctx,
        "gpus",
        {"name": "a", "gpu_type": "a100", "gpus": 2},
        {"name": "b", "gpu_type": "a100", "gpus": 1},
    )
    assert schedule(ctx, "local") == ["a"]
    end(ctx, "a", "failed")
    assert schedule(ctx, "local") == ["b"]


def test_a_task_that_does_not_fit_yet_holds_back_later_submissions(ctx: Context) -> None:
    add_experiment(ctx, "big", {"name": "a", "cpu": 3}, {"name": "b", "cpu": 3})
    add_experiment(ctx, "small", {"name": "c", "cpu": 1})
    # c would fit beside a, but b was submitted first: no starving big tasks.
    assert schedule(ctx, "local") == ["a"]
    end(ctx, "a")
    assert schedule(ctx, "local") == ["b", "c"]


def test_an_experiment_ends_with_its_best_task_or_failed_when_none_succeeded(
    ctx: Context,
) -> None:
    good = add_experiment(ctx, "good", {"name": "a"}, {"name": "b"}, {"name": "c"})
    schedule(ctx, "local")
    end(ctx, "a", score=0.2)
    end(ctx, "b", score=0.9)
    finish_experiment(ctx, good)
    with ctx.db.session() as session:
        assert session.get(Experiment, good).status == "running"  # type: ignore[union-attr]
    end(ctx, "c", "failed")
    finish_experiment(ctx, good)
    with ctx.db.session() as session:
        experiment = session.get(Experiment, good)
        assert experiment is not None
        assert (experiment.status, experiment.best_task) == ("succeeded", "b")


def test_a_task_the_cluster_can_no_longer_hold_fails_without_blocking_others(
    ctx: Context,
) -> None:
    add_experiment(ctx, "shrunk", {"name": "a", "cpu": 8}, {"name": "b", "cpu": 1})
    assert schedule(ctx, "local") == ["b"]
    assert statuses(ctx) == {"a": "failed", "b": "training"}
    with ctx.db.session() as session:
        error = session.query(Task).filter_by(name="a").one().error
    assert error is not None and error["code"] == "does_not_fit"


def test_a_diverged_loss_is_stored_as_null_not_as_nan(stub_broker: Any) -> None:
    from tunelab.training.reporting import finite

    progress = {"loss": float("nan"), "learning_rate": 0.1, "history": [{"loss": float("inf")}]}
    assert finite(progress) == {"loss": None, "learning_rate": 0.1, "history": [{"loss": None}]}


def test_a_search_runs_at_most_its_parallel_trials_and_others_are_not_held_back(
    ctx: Context,
) -> None:
    def trial(number: int) -> dict[str, Any]:
        values = {"learning_rate": 10.0**-number}
        search = {"search": "lr", "number": number, "values": values, "parallel": 2}
        return {"name": f"lr-{number}", "cpu": 0.5, "trial": search}

    add_experiment(ctx, "search", *(trial(n) for n in range(1, 5)), {"name": "plain"})
    assert schedule(ctx, "local") == ["lr-1", "lr-2", "plain"]
    assert schedule(ctx, "local") == []
    end(ctx, "lr-1")
    assert schedule(ctx, "local") == ["lr-3"]
    end(ctx, "lr-2", "failed")
    end(ctx, "lr-3")
    assert schedule(ctx, "local") == ["lr-4"]


def test_a_tpe_search_asks_for_each_next_trial_as_one_ends_and_follows_the_scores(
    ctx: Context,
) -> None:
    """A clearly good and a clearly bad learning rate: once TPE has seen both, it keeps
    to the good one. Every trial is asked for when one ends, never past `parallel`."""
    from tunelab.lifecycle.searches import continue_searches
    from tunelab.params import Parameters
    from tunelab.search import Search

    good, bad = 3e-3, 1e-7
    search = Search.model_validate(
        {"method": "tpe", "space": {"learning_rate": {"choice": [bad, good]}}, "trials": 6,
         "parallel": 2, "seed": 1}
    )  # fmt: skip
    spec = search.model_dump(mode="json")

    def trial(number: int, values: dict[str, Any]) -> dict[str, Any]:
        params = Parameters(**values).model_dump(mode="json")
        record = {"search": "lr", "number": number, "values": values, "parallel": 2, "spec": spec}
        return {"name": f"lr-{number}", "cpu": 0.5, "trial": record, "parameters": params}

    first = [trial(n, values) for n, values in enumerate(search.points(), 1)]
    experiment = add_experiment(ctx, "tpe", *first)
    seen: list[float] = []
    while True:
        started = schedule(ctx, "local")
        assert len([s for s in statuses(ctx).values() if s == "training"]) <= 2
        if not started and "training" not in statuses(ctx).values():
            break
        with ctx.db.session() as session:
            running = [t for t in session.query(Task) if t.status == "training"]
            lrs = {t.name: t.spec["parameters"]["learning_rate"] for t in running}
        name = min(lrs)  # one trial ends at a time
        seen.append(lrs[name])
        end(ctx, name, score=0.9 if lrs[name] == good else 0.0)
        continue_searches(ctx, experiment)
    assert len(seen) == 6 and continue_searches(ctx, experiment) == 0
    assert bad in seen[:3] and good in seen[:3], seen  # both were tried early
    assert seen[3:] == [good] * 3, seen
    with ctx.db.session() as session:
        names = sorted(t.name for t in session.query(Task))
    assert names == [f"lr-{n}" for n in range(1, 7)]
    finish_experiment(ctx, experiment)
    with ctx.db.session() as session:
        best = session.get(Experiment, experiment).best_task  # type: ignore[union-attr]
        chosen = session.query(Task).filter_by(name=best).one()
        assert chosen.spec["parameters"]["learning_rate"] == good


def test_a_job_end_delivered_again_sends_the_deployment_a_crash_left_unsent(
    ctx: Context, stub_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that asked to be deployed: its end records the job's event and a deploying
    service in one transaction, then sends both. A worker that dies between the two
    leaves a service no model server will ever be assigned to, unless the redelivered
    end sends its deployment again."""
    from dramatiq import Message

    from tunelab.fine_tuning import TASK
    from tunelab.lifecycle.fine_tuning import job_ended

    experiment_id = add_experiment(ctx, "ftjob-0123456789abcdef01234567", {"name": TASK})
    with ctx.db.session() as session:
        session.query(Experiment).one().status = "succeeded"
        task = session.query(Task).one()
        task.status, task.model = "succeeded", "faq-model"
        session.add(Model(workspace_id=task.workspace_id, name="faq-model", kind="lora", uri="x"))
        session.add(
            FineTuningJob(
                id="ftjob-0123456789abcdef01234567",
                workspace_id=task.workspace_id,
                experiment_id=experiment_id,
                spec={"model": "tiny-llama", "suffix": "faq", "deploy": "faq"},
            )
        )

    def sent_types() -> list[str]:
        types = []
        for queue in stub_broker.queues.values():
            while not queue.empty():
                message = Message.decode(queue.get_nowait())
                queue.task_done()  # else a later test's broker.join waits for it for ever
                if message.args and isinstance(message.args[0], dict):
                    types.append(message.args[0].get("type"))
        return types

    def crash(*_: Any) -> None:
        raise SystemExit("the worker died after its commit")

    monkeypatch.setattr(EventBus, "_send_all", crash)
    with pytest.raises(SystemExit):
        job_ended(ctx, experiment_id)
    monkeypatch.undo()
    with ctx.db.session() as session:
        (service,) = session.query(Service).all()
        assert (service.name, service.status, service.server_id) == ("faq", "deploying", None)
    assert sent_types() == []

    job_ended(ctx, experiment_id)  # the redelivery
    # (The job's own event goes to webhooks only: none are registered here.)
    assert sent_types() == ["service.deploy_requested"]
    with ctx.db.session() as session:
        assert session.query(Service).count() == 1
        recorded = [r.type for r in session.query(EventRecord)]
        assert sorted(recorded) == ["fine_tuning.job.succeeded", "service.deploy_requested"]
