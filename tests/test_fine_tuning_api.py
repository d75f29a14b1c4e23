"""OpenAI's files and fine-tuning jobs API in-process, through the official `openai`
client: what a file and a job look like, refusals in OpenAI's shape naming the
parameter, pagination, cancel. (Training, events and deployment end to end are in
tests/test_platform_serving.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.test_http import Api, app_api, make_settings
from tunelab.db.tables import (
    Dataset,
    EventRecord,
    Experiment,
    FineTuningJob,
    Model,
    ParameterGroup,
    Task,
)
from tunelab.events.bus import EventBus
from tunelab.fine_tuning import JobRequest, group_values, job_of_model_name, request_field
from tunelab.lifecycle.fine_tuning import start_waiting_jobs
from tunelab.store import keys

CHATS = "".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    + "\n"
    for q, a in (("What is 2+2?", "4"), ("Capital of France?", "Paris"))
).encode()


@pytest.fixture
def api(tmp_path: Path, redis_url: str, queues: dict[str, str]) -> Iterator[Api]:
    with app_api(make_settings(tmp_path, redis_url, queues)) as api:
        yield api


def sdk(api: Api, workspace: str = "acme") -> openai.OpenAI:
    # The TestClient is an httpx.Client: the official client talks to the app in-process.
    return openai.OpenAI(
        base_url="http://testserver/v1",
        api_key=api.tokens[workspace],
        http_client=api.client,
        max_retries=0,
    )


def checked(api: Api, file_id: str, status: str = "ready", error: str | None = None) -> None:
    """The file's dataset as ingestion leaves it (ingestion is tested on the platform)."""
    with api.db.session() as session:
        dataset = session.query(Dataset).filter_by(name=file_id).one()
        dataset.status = status
        dataset.stats = {"train": {"rows": 2, "kind": "conversations"}}
        dataset.files = {"train": "file:///nowhere/train.parquet"}
        if error:
            dataset.error = {"code": "dataset_invalid", "message": error}


def uploaded(api: Api, name: str = "chats.jsonl", status: str = "ready") -> str:
    file = sdk(api).files.create(file=(name, CHATS), purpose="fine-tune")
    checked(api, file.id, status)
    return file.id


def test_a_file_is_a_dataset_read_back_as_openai_shows_files(api: Api) -> None:
    client = sdk(api)
    file = client.files.create(file=("chats.jsonl", CHATS), purpose="fine-tune")
    assert file.id.startswith("file-") and file.object == "file"
    assert (file.bytes, file.filename, file.purpose, file.status) == (
        len(CHATS),
        "chats.jsonl",
        "fine-tune",
        "uploaded",
    )
    # The native API sees the same dataset, being checked as any upload is.
    native = api.client.get(f"/api/v1/datasets/{file.id}", headers=api.auth()).json()
    assert native["status"] == "pending" and native["source"]["purpose"] == "fine-tune"
    assert client.files.content(file.id).read() == CHATS
    checked(api, file.id, "failed", "The dataset has 1 problem(s); first: Line 2, messages")
    again = client.files.retrieve(file.id)
    assert again.status == "error" and again.status_details is not None
    assert "Line 2" in again.status_details
    # Another workspace sees nothing of it.
    with pytest.raises(openai.NotFoundError):
        sdk(api, "globex").files.retrieve(file.id)
    assert client.files.delete(file.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file.id)


def test_files_are_listed_newest_first_a_page_at_a_time(api: Api) -> None:
    client = sdk(api)
    ids = [uploaded(api, f"f{i}.jsonl") for i in range(3)]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2] and page.has_more
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]  # the SDK pages on
    assert [f.id for f in client.files.list(order="asc")] == ids
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.files.list(limit=0)
    assert bad.value.param == "limit"


def test_an_upload_for_another_purpose_is_refused_and_nothing_is_kept(api: Api) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        sdk(api).files.create(file=("x.jsonl", CHATS), purpose="assistants")
    assert refused.value.param == "purpose"
    assert api.count(Dataset) == 0
    assert api.stored_objects() == []


def test_a_job_is_a_one_task_experiment_with_its_own_parameter_group(api: Api) -> None:
    client = sdk(api)
    training, validation = uploaded(api), uploaded(api, "held-out.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training,
        validation_file=validation,
        suffix="faq",
        seed=7,
        metadata={"team": "support"},
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 2},
        extra_body={"preset": "tiny-lora"},
    )
    assert job.object == "fine_tuning.job" and job.status == "queued"
    assert (job.model, job.training_file, job.validation_file) == (
        "tiny-llama",
        training,
        validation,
    )
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (3, 8)
    assert job.hyperparameters.learning_rate_multiplier == 2
    assert job.seed == 7 and job.metadata == {"team": "support"}
    assert job.method is not None and job.method.type == "supervised"
    assert job.fine_tuned_model is None and job.organization_id == "acme"
    experiment = api.client.get(f"/api/v1/experiments/{job.id}", headers=api.auth()).json()
    (trained,) = experiment["tasks"]
    assert trained["dataset"] == training and trained["validation_dataset"] == validation
    assert trained["parameters"]["learning_rate"] == pytest.approx(0.006)  # twice tiny-lora's
    assert trained["parameters"]["epochs"] == 3 and trained["parameters"]["seed"] == 7
    assert experiment["evaluation"] == "perplexity"
    with api.db.session() as session:
        spec = session.query(Task).one().spec
        assert spec["files"]["validate"] == "file:///nowhere/train.parquet"
        assert session.query(EventRecord).filter_by(type="experiment.created").count() == 1
    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    events = client.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in events.data] == ["Created fine-tuning job."]
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_the_final_checkpoint_is_the_step_whose_weights_the_model_holds(api: Api) -> None:
    """With `select: best` the model holds an earlier step's weights than the last: that
    step is the one listed as the fine-tuned model, the kept ones as checkpoints."""
    client = sdk(api)
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded(api))
    store = api.client.app.state.store  # type: ignore[attr-defined]
    with api.db.session() as session:
        task = session.query(Task).one()
        task.model, task.status = "the-model", "succeeded"
        session.query(Experiment).one().status = "succeeded"
        task_id = task.id
        session.add(
            Model(
                id=task_id,
                workspace_id=task.workspace_id,
                name="the-model",
                kind="finetuned",
                uri="file:///nowhere/",
                spec={"selection": {"select": "best", "step": 2}},
            )
        )
    points = [{"step": s, "loss": 1 / s, "val_loss": 0.5 + abs(s - 2)} for s in (1, 2, 3, 4)]
    metrics = "".join(json.dumps(p) + "\n" for p in points)
    store.put_bytes(keys.task_file(task_id, "metrics.jsonl"), metrics.encode())
    store.put_bytes(keys.task_checkpoints(task_id) + "latest.json", b'{"steps": [3]}')
    final = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    listed = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [(c.step_number, c.fine_tuned_model_checkpoint) for c in listed] == [
        (3, f"{final}:ckpt-step-3"),
        (2, final),
    ]
    assert listed[1].metrics.valid_loss == 0.5


def test_a_dpo_job_trains_dpo_with_its_beta(api: Api) -> None:
    training = uploaded(api)
    with api.db.session() as session:
        session.query(Dataset).filter_by(name=training).one().stats = {
            "train": {"rows": 2, "kind": "preference"}
        }
    job = sdk(api).fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25}}},
    )
    assert job.method is not None and job.method.type == "dpo"
    with api.db.session() as session:
        group = session.query(ParameterGroup).filter_by(name=job.id).one()
        assert group.finetune_type == "DPO" and group.parameters["dpo_beta"] == 0.25
        assert session.query(Experiment).one().spec["evaluation"] == "preference-accuracy"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        (
            {"method": {"type": "supervised",
                        "supervised": {"hyperparameters": {"batch_size": 0}}}},
            "method.supervised.hyperparameters.batch_size",
        ),
        (
            {"hyperparameters": {"learning_rate_multiplier": 1000}},
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"suffix": "has:colons"}, "suffix"),
        ({"training_file": "file-" + "0" * 24}, "training_file"),
        ({"validation_file": "not-a-file"}, "validation_file"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
    ],
)  # fmt: skip
def test_a_bad_job_is_refused_in_openais_shape_naming_the_parameter(
    api: Api, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "tiny-llama", "training_file": uploaded(api), **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(api).fine_tuning.jobs.create(**body)
    assert refused.value.param == param, refused.value.body
    assert refused.value.type == "invalid_request_error"
    # Nothing is half-stored: no experiment, no job, no parameter group.
    assert api.count(Experiment) == api.count(FineTuningJob) == api.count(ParameterGroup) == 0


def test_a_job_on_an_invalid_file_is_refused_saying_why(api: Api) -> None:
    client = sdk(api)
    file = client.files.create(file=("chats.jsonl", CHATS), purpose="fine-tune")
    checked(api, file.id, "failed", "The dataset has 1 problem(s); first: Line 2, messages")
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=file.id)
    assert refused.value.param == "training_file" and "Line 2" in refused.value.message


def files_checked(api: Api, file_id: str) -> None:
    """What the CPU workers do when a file's checks end (dataset.validated or .failed;
    the actors are run on the platform, tests/test_platform_serving.py)."""
    state = api.client.app.state  # type: ignore[attr-defined]
    with api.db.session() as session:
        workspace = session.query(Dataset).filter_by(name=file_id).one().workspace_id
    start_waiting_jobs(state.context, workspace, file_id)


def test_a_job_asked_for_right_after_the_upload_waits_for_its_files_then_starts(
    api: Api,
) -> None:
    """OpenAI's own examples create the job straight after the upload: the job waits
    (`validating_files`) and starts once its files are processed."""
    client = sdk(api)
    training = client.files.create(file=("chats.jsonl", CHATS), purpose="fine-tune").id
    validation = client.files.create(file=("held.jsonl", CHATS), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training, validation_file=validation, suffix="x"
    )
    assert job.status == "validating_files" and api.count(Experiment) == 0
    checked(api, training)
    files_checked(api, training)  # its validation file is still being checked
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
    checked(api, validation)
    files_checked(api, validation)
    started = client.fine_tuning.jobs.retrieve(job.id)
    assert started.status == "queued" and started.experiment == job.id  # type: ignore[attr-defined]
    (task,) = api.client.get(f"/api/v1/experiments/{job.id}", headers=api.auth()).json()["tasks"]
    assert (task["dataset"], task["validation_dataset"]) == (training, validation)
    files_checked(api, validation)  # a second delivery starts nothing more
    assert api.count(Experiment) == 1
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert f"Validating training file: {training}" in messages
    assert "Created fine-tuning job." in messages


def test_a_start_a_crash_left_unsent_is_sent_when_the_check_is_delivered_again(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that started the job died between its commit and sending
    `experiment.created`: nothing would schedule the job. The check's event, delivered
    again, sends it again."""
    client = sdk(api)
    training = client.files.create(file=("chats.jsonl", CHATS), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training)
    checked(api, training)
    real, sent = EventBus._send_all, []

    def crash(*_: Any) -> None:
        raise SystemExit("the worker died after its commit")

    def record(bus: EventBus, event: Any, *rest: Any) -> None:
        sent.append(event.type)
        real(bus, event, *rest)

    monkeypatch.setattr(EventBus, "_send_all", crash)
    with pytest.raises(SystemExit):
        files_checked(api, training)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    monkeypatch.setattr(EventBus, "_send_all", record)
    files_checked(api, training)
    assert sent == ["experiment.created"] and api.count(Experiment) == 1


def test_a_waiting_job_fails_naming_its_invalid_file_or_is_cancelled(api: Api) -> None:
    client = sdk(api)
    bad = client.files.create(file=("bad.jsonl", CHATS), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as refused:  # not worth waiting for
        client.fine_tuning.jobs.create(model="no-such-model", training_file=bad)
    assert refused.value.param == "model"
    doomed = client.fine_tuning.jobs.create(model="tiny-llama", training_file=bad)
    checked(api, bad, "failed", "The dataset has 1 problem(s); first: Line 2, messages")
    files_checked(api, bad)
    files_checked(api, bad)  # delivered again: it ends once
    failed = client.fine_tuning.jobs.retrieve(doomed.id)
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.code, failed.error.param) == ("invalid_training_file", "training_file")
    assert "Line 2" in failed.error.message and failed.finished_at is not None
    assert "The job failed" in client.fine_tuning.jobs.list_events(doomed.id).data[0].message

    pending = client.files.create(file=("later.jsonl", CHATS), purpose="fine-tune").id
    unwanted = client.fine_tuning.jobs.create(model="tiny-llama", training_file=pending)
    with pytest.raises(openai.ConflictError):  # the job would wait for ever
        client.files.delete(pending)
    native = api.client.delete(f"/api/v1/datasets/{pending}", headers=api.auth())
    assert native.status_code == 409 and unwanted.id in native.json()["error"]["message"]
    assert client.fine_tuning.jobs.cancel(unwanted.id).status == "cancelled"
    checked(api, pending)
    files_checked(api, pending)  # cancelled: its files' end starts nothing
    assert client.fine_tuning.jobs.retrieve(unwanted.id).status == "cancelled"
    assert api.count(Experiment) == 0
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(unwanted.id)
    with api.db.session() as session:
        ended = sorted(r.type for r in session.query(EventRecord) if "fine_tuning" in r.type)
    assert ended == ["fine_tuning.job.cancelled", "fine_tuning.job.failed"]
    # Their parameter groups went with them, as a refused job's does.
    assert api.count(ParameterGroup) == 0


def test_jobs_are_listed_newest_first_by_cursor_and_metadata(api: Api) -> None:
    client = sdk(api)
    training = uploaded(api)
    jobs = [
        client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=training, metadata={"n": str(i)}
        ).id
        for i in range(3)
    ]
    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == jobs[::-1][:2] and first.has_more
    rest = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in rest.data] == [jobs[0]] and not rest.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == jobs[::-1]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"n": "1"})] == [jobs[1]]
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list(after="ftjob-" + "f" * 24)
    assert list(sdk(api, "globex").fine_tuning.jobs.list()) == []


def test_cancelling_a_job_cancels_its_experiment_once(api: Api) -> None:
    client = sdk(api)
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded(api))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert (
        api.client.get(f"/api/v1/experiments/{job.id}", headers=api.auth()).json()["status"]
        == "cancelled"
    )
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        sdk(api, "globex").fine_tuning.jobs.cancel(job.id)


def test_the_request_maps_onto_tunelabs_parameters() -> None:
    request = JobRequest.model_validate(
        {
            "model": "m",
            "training_file": "file-" + "a" * 24,
            "seed": 3,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "beta": 0.5}}},
        }
    )
    assert group_values(request) == {
        "finetune_type": "DPO",
        "epochs": 2,
        "dpo_beta": 0.5,
        "seed": 3,
    }
    assert request_field("parameters.dpo_beta", request) == "method.dpo.hyperparameters.beta"
    assert request_field("tasks[0].dataset", request) == "training_file"
    assert job_of_model_name("ft:tiny-llama:acme:faq:" + "b" * 24) == "ftjob-" + "b" * 24
    assert job_of_model_name("ft:tiny-llama:acme:faq:" + "b" * 24 + ":ckpt-step-3") is None
    assert job_of_model_name("tiny-llama") is None
