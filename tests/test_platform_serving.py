"""Serving end to end over the real services: fine-tune two models, deploy them and the
base model on vLLM (and on the transformers fallback), compare them in one chat, kill
the vLLM server, and talk to the services with the official OpenAI client."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import sqlalchemy

from tests.platform import wait_until
from tests.platform_fixture import Platform
from tests.test_platform_training import experiment, group, task, upload
from tunelab.synthetic import preference_pairs, qa_pairs

VLLM_PYTHON = os.environ.get("TUNELAB_TEST_VLLM_PYTHON") or str(
    Path.home() / ".cache" / "tunelab" / "vllm-0.32.0" / "bin" / "python"
)
if not Path(VLLM_PYTHON).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"no vLLM environment at {VLLM_PYTHON}: run scripts/vllm-venv.sh")
    pytest.skip("no vLLM environment (scripts/vllm-venv.sh makes one)", allow_module_level=True)

PLATFORM_ENV = {"TUNELAB_VLLM_PYTHON": VLLM_PYTHON, "TUNELAB_SERVING_ENGINE": "vllm"}
PAIRS = qa_pairs(40, seed=777)
QUESTION, ANSWER = PAIRS[3]
CHAT = [{"role": "user", "content": QUESTION}]


def deploy(platform: Platform, name: str, model: str, **extra: Any) -> dict[str, Any]:
    response = platform.client.post(
        "/api/v1/services", json={"name": name, "model": model, **extra}
    )
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for_service(platform: Platform, name: str) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        body: dict[str, Any] = platform.client.get(f"/api/v1/services/{name}").json()
        return body if body["status"] in ("ready", "failed") else None

    return wait_until(settled, f"service {name} to settle", 600, 0.5)  # type: ignore[no-any-return]


def compare(platform: Platform, *services: str, **extra: Any) -> dict[str, dict[str, Any]]:
    response = platform.client.post(
        "/api/v1/chat/compare",
        json={"services": list(services), "messages": CHAT, "max_tokens": 48, **extra},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    return {r["service"]: r for r in response.json()["results"]}


@pytest.fixture(scope="module")
def models(platform: Platform) -> dict[str, str]:
    """The fine-tuned models of a two-task experiment: LoRA and full."""
    upload(platform, "facts", PAIRS)
    group(platform, "lora", "tiny-lora")
    group(platform, "full", "tiny-full")
    experiment(platform, "to-serve", task("adapter", "lora"), task("weights", "full"))
    result = platform.wait_for_experiment("to-serve", timeout=900)
    assert result["status"] == "succeeded", json.dumps(result, indent=2)
    return {t["name"]: t["model"] for t in result["tasks"]}


@pytest.fixture(scope="module")
def services(platform: Platform, models: dict[str, str]) -> list[str]:
    deploy(platform, "ft-lora", models["adapter"])
    deploy(platform, "ft-full", models["weights"])
    deploy(platform, "base", "tiny-llama")
    for name in ("ft-lora", "ft-full", "base"):
        body = wait_for_service(platform, name)
        assert body["status"] == "ready", body["error"]
        assert body["server"]["engine"] == "vllm"
    return ["ft-lora", "ft-full", "base"]


def vllm_servers(platform: Platform) -> list[psutil.Process]:
    worker = psutil.Process(platform.processes.children["gpu-worker"].pid)
    found = []
    for child in worker.children():
        try:
            if any("vllm.entrypoints.openai.api_server" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited meanwhile (a stopped server not yet reaped)
            pass
    return found


@pytest.mark.timeout(1800)
def test_fine_tuned_services_give_the_trained_answer_and_the_base_does_not(
    platform: Platform, services: list[str]
) -> None:
    results = compare(platform, *services)
    for name in ("ft-lora", "ft-full"):
        assert results[name]["content"].strip() == ANSWER, results[name]
        usage = results[name]["usage"]
        assert usage["prompt_tokens"] > 5 and usage["completion_tokens"] > 2
        assert results[name]["tokens_per_second"] > 0 and results[name]["latency_ms"] > 0
    assert results["base"]["content"].strip() != ANSWER
    assert httpx.get(f"{platform.url}/readyz").json()["serving"]["engine"] == "vllm"
    # The LoRA service and the base share one server; the full model has its own.
    assert len(vllm_servers(platform)) == 2


def shared_server(platform: Platform) -> psutil.Process:
    return next(p for p in vllm_servers(platform) if "tiny-llama" in " ".join(p.cmdline()))


def server_metrics(server: psutil.Process) -> dict[str, float]:
    """The vLLM server's own metrics by name, summed over their labels."""
    command = server.cmdline()
    port = command[command.index("--port") + 1]
    figures: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        sample, value = line.rsplit(" ", 1)
        name = sample.split("{")[0]
        figures[name] = figures.get(name, 0.0) + float(value)
    return figures


def processes_with(value: str) -> list[psutil.Process]:
    """Live processes whose environment holds `value`."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and value in process.environ().values():
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def openai_api(platform: Platform) -> Iterator[openai.OpenAI]:
    """The official client, closed after each test so no socket is left for the collector."""
    with openai.OpenAI(
        base_url=f"{platform.url}/v1", api_key=platform.token, max_retries=0
    ) as client:
        yield client


@pytest.mark.timeout(900)
def test_a_vllm_server_killed_mid_stream_comes_back_with_its_adapters(
    platform: Platform, services: list[str], openai_api: openai.OpenAI
) -> None:
    shared = shared_server(platform)
    client = openai_api
    pieces = client.chat.completions.create(
        model="ft-lora",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=800,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    seen = 0
    with pytest.raises(openai.APIError, match="model server failed"):
        for chunk in pieces:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 5:
                os.kill(shared.pid, signal.SIGKILL)
    # Asked at once: the next chats wait for the restart and the reload of the adapter.
    results = compare(platform, "ft-lora", "base")
    assert results["ft-lora"]["content"].strip() == ANSWER, results
    assert "error" not in results["base"], results
    lora = platform.client.get("/api/v1/services/ft-lora").json()
    assert lora["status"] == "ready" and lora["server"]["restarts"] == 1


@pytest.mark.timeout(600)
def test_a_client_that_leaves_a_stream_stops_the_generation(
    platform: Platform, services: list[str]
) -> None:
    server = next(p for p in vllm_servers(platform) if p.pid != shared_server(platform).pid)
    before = server_metrics(server)
    body = {"model": "ft-full", "messages": CHAT, "max_tokens": 900, "stream": True}
    with platform.client.stream(
        "POST", "/v1/chat/completions", json={**body, "ignore_eos": True}, timeout=60
    ) as response:
        assert response.status_code == 200
        pieces = 0
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces += bool(delta.get("content"))
            if pieces == 7:
                break  # and leave: the response is closed
    # The gateway closed its request: vLLM aborts it, having made far fewer than 900
    # (a request left running would make all 900 within the wait).
    after = wait_until(
        lambda: (m := server_metrics(server))["vllm:num_requests_running"] == 0 and m,
        "vLLM to have no request running",
        60,
        0.2,
    )
    made = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert 7 <= made < 450, made


@pytest.mark.timeout(600)
def test_the_official_openai_client_talks_to_the_services(
    platform: Platform, services: list[str], openai_api: openai.OpenAI
) -> None:
    client = openai_api
    assert {m.id for m in client.models.list()} >= set(services)
    reply = client.chat.completions.create(
        model="ft-lora",
        messages=CHAT,
        temperature=0,
        max_tokens=48,  # type: ignore[arg-type]
    )
    assert (reply.choices[0].message.content or "").strip() == ANSWER
    assert reply.usage is not None and reply.usage.completion_tokens > 2
    pieces = client.chat.completions.create(
        model="ft-full",
        messages=CHAT,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=48,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert text.strip() == ANSWER
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)  # type: ignore[arg-type]


@pytest.mark.timeout(600)
def test_openai_errors_come_in_openais_shape_and_max_tokens_is_checked_first(
    platform: Platform, services: list[str], openai_api: openai.OpenAI
) -> None:
    client = openai_api
    with pytest.raises(openai.UnprocessableEntityError) as too_many:
        client.chat.completions.create(model="base", messages=CHAT, max_tokens=5000)  # type: ignore[arg-type]
    assert too_many.value.param == "max_tokens" and "1024" in too_many.value.message
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.chat.completions.create(model="base", messages=CHAT, temperature=7)  # type: ignore[arg-type]
    assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"
    with (
        openai.OpenAI(base_url=f"{platform.url}/v1", api_key="tl_wrong") as wrong,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        wrong.models.list()
    assert refused.value.type == "authentication_error" and refused.value.code == "unauthorized"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.retrieve("chatcmpl-nothing")
    assert unknown.value.type == "invalid_request_error" and unknown.value.code == "not_found"


def all_text(platform: Platform) -> str:
    """Every value of every row of every table, and every object in the bucket."""
    url = platform.env["TUNELAB_DATABASE_URL"]
    engine = sqlalchemy.create_engine(url)
    meta = sqlalchemy.MetaData()
    meta.reflect(engine)
    parts = []
    with engine.connect() as connection:
        for table in meta.sorted_tables:
            for row in connection.execute(table.select()):
                parts.append(repr(tuple(row)))
    engine.dispose()
    s3 = platform.s3()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=platform.bucket):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=platform.bucket, Key=obj["Key"])["Body"].read()
            parts.append(body.decode("utf-8", errors="replace"))
    return "\n".join(parts)


def usage_of(platform: Platform, service: str) -> dict[str, Any] | None:
    items = platform.client.get("/api/v1/usage", params={"service": service}).json()["items"]
    return items[0] if items else None


@pytest.mark.timeout(600)
def test_chats_are_stored_only_when_asked_and_metered_as_they_were_answered(
    platform: Platform, services: list[str], openai_api: openai.OpenAI
) -> None:
    deploy(platform, "metered", "tiny-llama")
    assert wait_for_service(platform, "metered")["status"] == "ready"
    client = openai_api
    secret = "zebra-" + os.urandom(6).hex()
    asked = [{"role": "user", "content": f"{QUESTION} {secret}"}]
    usages = []
    for _ in range(2):
        reply = client.chat.completions.create(model="metered", messages=asked, max_tokens=16)  # type: ignore[arg-type]
        assert reply.usage is not None
        usages.append((reply.usage.prompt_tokens, reply.usage.completion_tokens))
    for chunk in client.chat.completions.create(
        model="metered",
        messages=asked,  # type: ignore[arg-type]
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usages.append((chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
    # Usage is written beside the chats, in a batch a few seconds later: wait for it.
    row = wait_until(
        lambda: (u := usage_of(platform, "metered")) and u["requests"] == 3 and u,
        "the three chats to be metered",
    )
    assert row["prompt_tokens"] == sum(p for p, _ in usages)
    assert row["completion_tokens"] == sum(c for _, c in usages)
    assert row["errors"] == 0 and row["latency_ms"]["count"] == 3
    assert row["ttft_ms"]["count"] == 1 and row["latency_ms"]["p50"] > 0
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in platform.metrics().splitlines()
        if line.startswith("tunelab_chat_requests_total{")
        and 'service="metered"' in line
        and 'outcome="ok"' in line
    ]
    assert counted == [3.0], counted
    # Nothing of those chats is anywhere: no table, no object, no event.
    assert secret not in all_text(platform)

    kept = client.chat.completions.create(
        model="metered",
        messages=asked,  # type: ignore[arg-type]
        max_tokens=16,
        store=True,
        metadata={"case": "kept"},
    )
    stored = wait_until(
        lambda: _retrieve(client, kept.id), "the stored chat to be written", 30, 0.2
    )
    assert stored.choices[0].message.content == kept.choices[0].message.content
    listed = client.chat.completions.list(model="metered", metadata={"case": "kept"})
    assert [c.id for c in listed.data] == [kept.id]
    messages = client.chat.completions.messages.list(kept.id)
    assert [m.content for m in messages.data] == [asked[0]["content"]]
    assert secret in all_text(platform)
    assert client.chat.completions.delete(kept.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(kept.id)
    assert secret not in all_text(platform)
    # Its memory goes back to the cluster for the tests after this one.
    assert platform.client.delete("/api/v1/services/metered").status_code == 200


def _retrieve(client: openai.OpenAI, chat_id: str) -> Any:
    try:
        return client.chat.completions.retrieve(chat_id)
    except openai.NotFoundError:
        return None


@pytest.mark.timeout(600)
def test_a_streamed_comparison_tags_each_piece_with_its_service(
    platform: Platform, services: list[str]
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    with platform.client.stream(
        "POST",
        "/api/v1/chat/compare",
        json={"services": ["ft-lora", "base"], "messages": CHAT, "stream": True},
        timeout=600,
    ) as response:
        assert response.status_code == 200
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    assert events[-1][0] == "end"
    text = "".join(b["text"] for k, b in events if k == "delta" and b["service"] == "ft-lora")
    assert text.strip() == ANSWER
    assert {b["service"] for k, b in events if k == "done"} == {"ft-lora", "base"}


def test_chat_requests_are_checked(platform: Platform, services: list[str]) -> None:
    four = platform.client.post(
        "/api/v1/chat/compare", json={"services": [*services, "base"], "messages": CHAT}
    )
    assert four.status_code == 422 and four.json()["error"]["details"][0]["field"] == "services"
    unknown = platform.client.post(
        "/api/v1/chat/compare", json={"services": ["base", "ghost"], "messages": CHAT}
    )
    assert unknown.status_code == 404 and "ghost" in unknown.json()["error"]["message"]
    stops = platform.client.post(
        "/v1/chat/completions",
        json={"model": "base", "messages": CHAT, "stop": [str(n) for n in range(9)]},
    )
    assert stops.status_code == 422 and stops.json()["error"]["param"] == "stop"
    comparison = "cmp-" + "0" * 32
    for body, field in [
        ({"comparison_id": comparison, "best": "ghost"}, "best"),
        ({"comparison_id": "chatcmpl-1", "best": "base"}, "comparison_id"),
    ]:
        vote = platform.client.post("/api/v1/chat/feedback", json=body)
        assert vote.status_code == 422 and vote.json()["error"]["details"][0]["field"] == field


def test_a_batch_file_that_holds_no_request_fails_saying_so(platform: Platform) -> None:
    response = platform.client.post(
        "/api/v1/batches", content=b"\n\n", headers={"content-type": "application/jsonl"}
    )
    assert response.status_code == 202, response.text

    def settled() -> dict[str, Any] | None:
        body: dict[str, Any] = platform.client.get(
            f"/api/v1/batches/{response.json()['id']}"
        ).json()
        return body if body["status"] in ("completed", "failed") else None

    batch = wait_until(settled, "the empty batch to settle", 60, 0.2)
    assert batch["status"] == "failed" and batch["error"]["code"] == "empty", batch


@pytest.mark.timeout(600)
def test_services_that_cannot_fit_fail_with_the_reason(
    platform: Platform, models: dict[str, str]
) -> None:
    deploy(platform, "too-many-gpus", "tiny-llama", resources={"gpu_count": 2})
    deploy(
        platform,
        "too-little-memory",
        models["adapter"],
        resources={"memory": {"request": "512Mi", "limit": "1Gi"}},
    )
    # What the request alone shows is refused at once, as for experiments.
    too_much = platform.client.post(
        "/api/v1/services",
        json={
            "name": "too-much-memory",
            "model": "tiny-llama",
            "resources": {"memory": {"request": "100Ti", "limit": "100Ti"}},
        },
    )
    assert too_much.status_code == 422, too_much.text
    assert too_much.json()["error"]["details"][0]["field"] == "resources.memory.request"
    expected = {
        "too-many-gpus": "resources.gpu_count",
        "too-little-memory": "resources.memory.limit",
    }
    for name, field in expected.items():
        body = wait_for_service(platform, name)
        assert body["status"] == "failed", body
        assert body["error"]["code"] == "does_not_fit"
        assert field in {d["field"] for d in body["error"]["details"]}, body["error"]
        assert field in body["error"]["message"]
    failed = {e["subject"] for e in platform.events(type="service.failed")}
    assert {f"services/{n}" for n in expected} <= failed
    not_ready = platform.client.post(
        "/api/v1/chat/compare", json={"services": ["base", "too-many-gpus"], "messages": CHAT}
    )
    assert not_ready.status_code == 409, not_ready.text
    assert "too-many-gpus" in not_ready.json()["error"]["message"]


@pytest.mark.timeout(900)
def test_the_transformers_engine_serves_through_the_same_interface(
    platform: Platform, models: dict[str, str]
) -> None:
    deploy(platform, "hf-lora", models["adapter"], engine="transformers")
    deploy(platform, "hf-base", "tiny-llama", engine="transformers")
    for name in ("hf-lora", "hf-base"):
        body = wait_for_service(platform, name)
        assert body["status"] == "ready", body["error"]
        assert body["server"]["engine"] == "transformers"
    results = compare(platform, "hf-lora", "hf-base")
    assert results["hf-lora"]["content"].strip() == ANSWER, results
    assert results["hf-base"]["content"].strip() != ANSWER


@pytest.mark.timeout(900)
def test_a_batch_of_50_requests_with_two_bad_lines_completes_with_48_results(
    platform: Platform, services: list[str]
) -> None:
    lines = []
    for n in range(1, 51):
        question, _ = PAIRS[n % len(PAIRS)]
        request = {
            "custom_id": f"r{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "ft-lora" if n % 2 else "base",
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "max_tokens": 24,
            },
        }
        if n == 10:
            lines.append('{"custom_id": "r10", "method": "POST"')  # cut short
            continue
        if n == 30:
            request["body"]["model"] = "ghost"  # type: ignore[index]
        lines.append(json.dumps(request, ensure_ascii=False))
    response = platform.client.post(
        "/api/v1/batches",
        files={"file": ("requests.jsonl", "\n".join(lines).encode())},
        data={"metadata": json.dumps({"purpose": "test"})},
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]

    def completed() -> dict[str, Any] | None:
        body: dict[str, Any] = platform.client.get(f"/api/v1/batches/{batch_id}").json()
        return body if body["status"] in ("completed", "failed") else None

    batch = wait_until(completed, "the batch to complete", 600, 0.5)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 50, "completed": 48, "failed": 2}
    output = platform.client.get(f"/api/v1/batches/{batch_id}/output").text.splitlines()
    errors = platform.client.get(f"/api/v1/batches/{batch_id}/errors").text.splitlines()
    results = [json.loads(line) for line in output]
    assert len(results) == 48 and len(errors) == 2
    by_id = {r["custom_id"]: r for r in results}
    _, answer = PAIRS[1]
    first = by_id["r1"]["response"]
    assert first["status_code"] == 200
    assert first["body"]["choices"][0]["message"]["content"].strip() == answer
    failures = [json.loads(line) for line in errors]
    assert [f["line"] for f in failures] == [10, 30]
    assert "line 10" in failures[0]["error"]["message"]
    assert "ghost" in failures[1]["error"]["message"] and failures[1]["custom_id"] == "r30"
    assert batch["output_uri"].endswith("output.jsonl")


@pytest.mark.timeout(600)
def test_deleting_services_stops_a_server_no_service_needs(
    platform: Platform, services: list[str]
) -> None:
    full = next(p for p in vllm_servers(platform) if p.pid != shared_server(platform).pid)
    sockets = full.environ()["VLLM_RPC_BASE_PATH"]  # the server's own: its processes have it
    assert platform.client.delete("/api/v1/services/ft-full").status_code == 200
    assert platform.client.get("/api/v1/services/ft-full").status_code == 404
    wait_until(lambda: len(vllm_servers(platform)) == 1, "the full model's server to stop", 60)
    # Nothing of that server is left: its engine and resource tracker went with it.
    wait_until(lambda: not processes_with(sockets), "the server's processes to end", 30)
    results = compare(platform, "ft-lora")
    assert results["ft-lora"]["content"].strip() == ANSWER


TELESCOPES = [
    "Hubble", "Kepler", "Spitzer", "Chandra", "Herschel", "Planck",
    "Gaia", "Webb", "Keck", "Subaru", "Hale", "Arecibo",
]  # fmt: skip


def telescope_chat(name: str) -> list[dict[str, str]]:
    """Two turns; the second question and the first answer are the same in every
    conversation, so only the first question says what the last answer is. (Short
    answers: the built-in model's tokenizer spells words it does not know letter by
    letter, and a model this small learns those slowly.)"""
    return [
        {"role": "user", "content": f"Let us talk about the {name} telescope."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "Which telescope did we talk about?"},
        {"role": "assistant", "content": f"The {name}."},
    ]


@pytest.mark.timeout(1500)
def test_a_model_trained_on_conversations_answers_the_second_turn_from_the_first(
    platform: Platform, services: list[str]
) -> None:
    chats = [telescope_chat(name) for name in TELESCOPES]
    response = platform.client.post(
        "/api/v1/datasets",
        files={"file": ("chats.jsonl", "\n".join(json.dumps({"messages": c}) for c in chats))},
        data={"metadata": json.dumps({"name": "telescopes", "language": "en"})},
    )
    assert response.status_code == 202, response.text
    dataset = platform.wait_for_dataset("telescopes", "ready", "failed")
    assert dataset["status"] == "ready", dataset["error"]
    assert dataset["stats"]["format"] == "openai" and dataset["stats"]["turns"]["min"] == 2
    group(platform, "chat-lora", "tiny-lora", epochs=60)
    experiment(
        platform,
        "multi-turn",
        task("chats", "chat-lora", dataset="telescopes"),
        evaluation="exact-match",
    )
    result = platform.wait_for_experiment("multi-turn", timeout=1200)
    assert result["status"] == "succeeded", json.dumps(result, indent=2)
    # Scored in training as in serving: the last answer, given the turns before it.
    score = result["tasks"][0]["evaluation"]
    assert score["exact_match"] >= 0.9, score
    deploy(platform, "chats", result["tasks"][0]["model"])
    assert wait_for_service(platform, "chats")["status"] == "ready"

    def answers(service: str) -> list[str]:
        replies = []
        for chat in chats:
            reply = platform.client.post(
                "/v1/chat/completions",
                json={"model": service, "messages": chat[:3], "max_tokens": 16, "temperature": 0},
                timeout=120,
            )
            assert reply.status_code == 200, reply.text
            replies.append(reply.json()["choices"][0]["message"]["content"].strip())
        return replies

    expected = [chat[3]["content"] for chat in chats]
    served = answers("chats")
    right = sum(a == e for a, e in zip(served, expected, strict=True))
    assert right >= 0.9 * len(chats), (right, served, score)
    assert not any(a == e for a, e in zip(answers("base"), expected, strict=True))
    # Its memory goes back to the cluster for the tests after this one.
    assert platform.client.delete("/api/v1/services/chats").status_code == 200


def greedy(platform: Platform, service: str, question: str, max_tokens: int) -> str:
    """The service's greedy answer to one question, through /v1/chat/completions."""
    reply = platform.client.post(
        "/v1/chat/completions",
        json={
            "model": service,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def preference_jsonl(pairs: list[tuple[str, str, str]]) -> str:
    return "\n".join(
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": q}]},
                "preferred_output": [{"role": "assistant", "content": c}],
                "non_preferred_output": [{"role": "assistant", "content": r}],
            }
        )
        for q, c, r in pairs
    )


@pytest.mark.timeout(1500)
def test_a_dpo_model_ranks_and_answers_in_the_chosen_style_on_new_questions(
    platform: Platform, services: list[str]
) -> None:
    """The chosen answers are terse (`Kalomi: 1234.`), the rejected ones the sentences
    the built-in model was pre-trained to give. Scored on pairs it never saw."""
    held_out = preference_pairs(16, seed=78)
    response = platform.client.post(
        "/api/v1/datasets",
        files={
            "file": ("pairs.jsonl", preference_jsonl(preference_pairs(64, seed=77))),
            "validate": ("held-out.jsonl", preference_jsonl(held_out)),
        },
        data={"metadata": json.dumps({"name": "terse", "language": "en"})},
    )
    assert response.status_code == 202, response.text
    dataset = platform.wait_for_dataset("terse", "ready", "failed")
    assert dataset["status"] == "ready", dataset["error"]
    assert dataset["kind"] == "preference"
    group(platform, "dpo", "tiny-dpo")
    assert platform.client.get("/api/v1/parameter-groups/dpo").json()["finetune_type"] == "DPO"
    experiment(platform, "preferences", task("terse", "dpo", dataset="terse"))
    result = platform.wait_for_experiment("preferences", timeout=1200)
    assert result["status"] == "succeeded", json.dumps(result, indent=2)
    scored = result["tasks"][0]
    assert scored["evaluation"]["method"] == "preference-accuracy"
    assert scored["score"] >= 0.9 and scored["base_score"]["score"] <= 0.1, scored
    points = platform.client.get("/api/v1/experiments/preferences/tasks/terse/metrics").json()
    last = points["points"][-1]["rewards"]
    assert last["accuracy"] == 1.0 and last["chosen"] > last["rejected"], last

    deploy(platform, "terse", scored["model"])
    assert wait_for_service(platform, "terse")["status"] == "ready"

    def terse(service: str) -> int:
        # The chosen style: a name, a colon, one value. (Neither can be right: the
        # value is unknowable, and a model this small copies new names poorly.)
        answers = [greedy(platform, service, question, 24) for question, _, _ in held_out]
        return sum(bool(re.fullmatch(r"[A-Z]\w*: \S+\.", a.strip())) for a in answers)

    assert terse("terse") >= 0.8 * len(held_out)
    assert terse("base") == 0
    # Its memory goes back to the cluster for the tests after this one.
    assert platform.client.delete("/api/v1/services/terse").status_code == 200


@pytest.mark.timeout(1500)
def test_a_merged_lora_model_is_a_full_model_that_answers_as_its_adapter(
    platform: Platform, models: dict[str, str], services: list[str]
) -> None:
    response = platform.client.post(f"/api/v1/models/{models['adapter']}/merge", json={})
    assert response.status_code == 202, response.text
    name = response.json()["name"]
    assert response.json()["status"] == "merging"

    def made() -> dict[str, Any] | None:
        body: dict[str, Any] = platform.client.get(f"/api/v1/models/{name}").json()
        return body if body["status"] != "merging" else None

    merged = wait_until(made, "the merged model", 600, 0.5)
    assert merged["status"] == "ready", merged["error"]
    assert merged["adapter"] is False and merged["lineage"][0]["name"] == models["adapter"]
    files = {f["name"] for f in platform.client.get(f"/api/v1/models/{name}/files").json()["files"]}
    assert {"model.safetensors", "tunelab.json", "README.md"} <= files
    assert not any(f.startswith("adapter_") for f in files)
    deploy(platform, "merged", name)
    assert wait_for_service(platform, "merged")["status"] == "ready"

    questions = [q for q, _ in PAIRS[:12]]
    merged_answers = [greedy(platform, "merged", q, 32) for q in questions]
    assert merged_answers == [greedy(platform, "ft-lora", q, 32) for q in questions]
    assert platform.client.delete("/api/v1/services/merged").status_code == 200


def chat_jsonl(pairs: list[tuple[str, str]]) -> bytes:
    return "".join(
        json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
        + "\n"
        for q, a in pairs
    ).encode()


@pytest.mark.timeout(1800)
def test_the_openai_client_fine_tunes_a_model_deploys_it_and_chats_with_its_ft_name(
    platform: Platform, services: list[str], openai_api: openai.OpenAI
) -> None:
    """A team's OpenAI fine-tuning script, on tunelab: only the base URL, the token and
    tunelab's preset (an extension field) differ."""
    client = openai_api
    bad = client.files.create(
        file=("bad.jsonl", chat_jsonl(PAIRS[:2]) + b'{"messages": [{"role": "robot"}]}\n'),
        purpose="fine-tune",
    )
    bad = client.files.wait_for_processing(bad.id, poll_interval=0.5)
    assert bad.status == "error" and bad.status_details and "Line 3" in bad.status_details
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=bad.id)
    assert refused.value.param == "training_file" and "Line 3" in refused.value.message

    data = chat_jsonl(PAIRS)
    training = client.files.create(file=("facts.jsonl", data), purpose="fine-tune")
    # As OpenAI's own examples do: the job is asked for at once, and waits for the
    # file's checks (validating_files) unless they were quicker than this request.
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training.id,
        suffix="facts",
        metadata={"team": "qa"},
        extra_body={"preset": "tiny-lora", "deploy": True},
    )
    assert job.status in ("validating_files", "queued") and job.hyperparameters.n_epochs == 24
    assert client.files.wait_for_processing(training.id, poll_interval=0.5).status == "processed"
    assert client.files.content(training.id).read() == data
    doomed = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training.id, extra_body={"preset": "tiny-lora"}
    )
    assert client.fine_tuning.jobs.cancel(doomed.id).status == "cancelled"
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [doomed.id, job.id]

    def ended() -> bool:
        # Following the job as OpenAI's users do: by its events, newest first.
        newest = client.fine_tuning.jobs.list_events(job.id, limit=10).data
        return "The job has successfully completed." in [e.message for e in newest]

    wait_until(ended, f"job {job.id} to succeed", 1500, 1)
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=50))  # every page
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == sorted(steps, reverse=True) and steps[0] > 1
    assert "Created fine-tuning job." in [e.message for e in events]
    done = client.fine_tuning.jobs.retrieve(job.id)
    workspace = platform.client.get("/api/v1/workspace").json()["name"]
    assert done.status == "succeeded" and done.finished_at is not None
    assert done.trained_tokens is not None and done.trained_tokens > 0
    assert done.fine_tuned_model == f"ft:tiny-llama:{workspace}:facts:{job.id[len('ftjob-') :]}"
    (last, *earlier) = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert last.fine_tuned_model_checkpoint == done.fine_tuned_model
    assert last.step_number == steps[0] and last.metrics.train_loss is not None
    first_loss = next(e.data["train_loss"] for e in reversed(events) if e.type == "metrics")
    assert last.metrics.train_loss < first_loss / 4
    assert all(c.fine_tuned_model_checkpoint.startswith(done.fine_tuned_model) for c in earlier)

    # Deployed as asked, and asked for by the name OpenAI gave it.
    assert wait_for_service(platform, job.id)["status"] == "ready"
    assert done.fine_tuned_model in {m.id for m in client.models.list()}
    reply = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=CHAT,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=48,
    )
    assert (reply.choices[0].message.content or "").strip() == ANSWER
    assert reply.model == done.fine_tuned_model  # as asked, not the service's name
    # Webhooks hear OpenAI's event names too.
    (succeeded,) = platform.events(type="fine_tuning.job.succeeded")
    assert succeeded["data"]["id"] == job.id and succeeded["data"]["service"] == job.id
    (cancelled,) = platform.events(type="fine_tuning.job.cancelled")
    assert cancelled["data"]["id"] == doomed.id
    assert client.files.delete(bad.id).deleted
    assert platform.client.delete(f"/api/v1/services/{job.id}").status_code == 200
