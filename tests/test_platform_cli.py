"""The CLI for people, run as a subprocess against the real platform: login, an upload
whose problems come back with their lines, `apply` of a declaration and again (no
change), `watch` whose exit code is the outcome and whose bars move in a terminal,
chat in a terminal, compare, download."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.platform import tunelab
from tests.platform_fixture import Platform
from tunelab.client import AsyncClient
from tunelab.synthetic import qa_pairs

PAIRS = qa_pairs(12, seed=31)
QUESTION, ANSWER = PAIRS[2]
PLATFORM_ENV = {"TUNELAB_SERVING_ENGINE": "transformers"}


@pytest.fixture(scope="module")
def home(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose config folder holds a profile made by `tunelab login`."""
    config = tmp_path_factory.mktemp("config")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
    env.update(XDG_CONFIG_HOME=str(config), COLUMNS="160", TERM="xterm-256color")
    done = cli(env, "login", "--url", platform.url, "--token", platform.token)
    assert done.returncode == 0, done.stderr
    return env


def cli(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tunelab(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=1200
    )


def test_login_keeps_the_token_to_its_owner_and_refuses_a_bad_one(
    platform: Platform, home: dict[str, str]
) -> None:
    stored = Path(home["XDG_CONFIG_HOME"]) / "tunelab" / "profiles.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text())["default"] == {
        "url": platform.url,
        "token": platform.token,
    }
    refused = cli(home, "login", "--url", platform.url, "--token", "tl_wrong", "--profile", "x")
    assert refused.returncode != 0 and "refused the token" in refused.stderr
    assert "x" not in json.loads(stored.read_text())
    nobody = cli({**home, "XDG_CONFIG_HOME": str(stored.parent / "empty")}, "datasets", "list")
    assert nobody.returncode != 0 and "tunelab login" in nobody.stderr


def test_an_upload_that_fails_its_checks_prints_its_problems_with_their_lines(
    home: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nWhat is 2+2?,4\n,no question here\nWhy?,\n")
    done = cli(home, "datasets", "upload", str(bad), "--name", "broken", "--wait")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"line 3\b.*question", done.stderr), done.stdout + done.stderr
    assert re.search(r"line 4\b.*answer", done.stderr), done.stdout + done.stderr
    listed = json.loads(cli(home, "datasets", "list", "--output", "json").stdout)
    assert {d["name"]: d["status"] for d in listed}["broken"] == "failed"


def declaration(folder: Path, epochs: int = 24) -> Path:
    with (folder / "faq.csv").open("w", newline="") as out:
        csv.writer(out).writerows([("question", "answer"), *PAIRS])
    path = folder / "tunelab.yaml"
    path.write_text(
        f"""
datasets:
  - name: faq
    file: faq.csv
    validate: faq.csv
parameter_groups:
  - name: lora
    preset: tiny-lora
    parameters: {{epochs: {epochs}}}
experiments:
  - name: faq-1
    tasks:
      - {{name: t1, base_model: tiny-llama, dataset: faq, parameter_group: lora}}
services:
  - name: faq-bot
    model: {{experiment: faq-1}}
"""
    )
    return path


@pytest.fixture(scope="module")
def applied(home: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = declaration(tmp_path_factory.mktemp("declared"))
    done = cli(home, "apply", "-f", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("datasets/faq", "parameter_groups/lora", "experiments/faq-1", "services/faq-bot"):
        assert f"{name} created" in done.stdout, done.stdout
    return path


@pytest.mark.timeout(1800)
def test_apply_makes_what_is_declared_and_a_second_apply_changes_nothing(
    platform: Platform, home: dict[str, str], applied: Path
) -> None:
    service = platform.client.get("/api/v1/services/faq-bot").json()
    assert service["status"] == "ready", service
    again = cli(home, "apply", "-f", str(applied))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no change: 0 created, 4 unchanged" in again.stdout, again.stdout
    assert platform.client.get("/api/v1/experiments").json()["items"][0]["name"] == "faq-1"
    # A field that cannot change in place is named, and nothing is made.
    changed = cli(home, "apply", "-f", str(declaration(applied.parent, epochs=3)))
    assert changed.returncode == 1
    assert "parameter_groups/lora: parameters.epochs is 3 in the file, 24" in changed.stderr
    assert len(platform.client.get("/api/v1/experiments").json()["items"]) == 1


@pytest.mark.timeout(900)
def test_compare_and_download_use_what_apply_made(
    platform: Platform, home: dict[str, str], applied: Path, tmp_path: Path
) -> None:
    compared = cli(home, "compare", "faq-bot", "-m", QUESTION, "--max-tokens", "32", "-o", "json")
    assert compared.returncode == 0, compared.stderr
    (result,) = json.loads(compared.stdout)["results"]
    assert result["content"].strip() == ANSWER
    model = json.loads(cli(home, "services", "list", "-o", "json").stdout)[0]["model"]
    downloaded = cli(home, "models", "download", model, str(tmp_path / "model"))
    assert downloaded.returncode == 0, downloaded.stderr
    names = {p.name for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert {"adapter_config.json", "tunelab.json"} <= names, names


@pytest.mark.timeout(900)
def test_chat_in_a_terminal_streams_answers_and_takes_system_and_reset(
    home: dict[str, str], applied: Path
) -> None:
    chat = pexpect.spawn(
        tunelab("chat", "faq-bot", "--max-tokens", "32")[0],
        tunelab("chat", "faq-bot", "--max-tokens", "32")[1:],
        env=home,
        encoding="utf-8",
        timeout=300,
    )
    chat.expect("you> ")
    chat.sendline(QUESTION)
    chat.expect(re.escape(ANSWER))
    chat.expect("you> ")
    chat.sendline("/system Answer briefly.")
    chat.expect("system prompt: Answer briefly.")
    chat.sendline("/reset")
    chat.expect("forgotten")
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


def start(platform: Platform, name: str, **overrides: Any) -> None:
    response = platform.client.post(
        "/api/v1/experiments",
        json={
            "name": name,
            "evaluation": "perplexity",
            "tasks": [
                {
                    "name": "t1",
                    "base_model": "tiny-llama",
                    "dataset": "faq",
                    "parameter_group": "lora",
                    "overrides": overrides,
                }
            ],
        },
    )
    assert response.status_code == 202, response.text


@pytest.mark.timeout(900)
def test_watch_in_a_terminal_shows_the_bars_move_and_exits_with_the_outcome(
    platform: Platform, home: dict[str, str], applied: Path
) -> None:
    start(platform, "watched", epochs=40)
    command = tunelab("experiments", "watch", "watched")
    watcher = pexpect.spawn(
        command[0], command[1:], env=home, encoding="utf-8", timeout=600, dimensions=(24, 160)
    )
    watcher.expect(pexpect.EOF)
    watcher.close()
    # The terminal's frames, one after another, without their escape sequences.
    recording = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", watcher.before or "")
    steps = [int(s) for s in re.findall(r"(\d+)/80 step", recording)]
    assert len(set(steps)) >= 3 and steps == sorted(steps), recording[-2000:]
    assert steps[-1] == 80
    assert "experiment watched succeeded" in recording
    assert watcher.exitstatus == 0
    # An experiment that has ended is watched at once, with its outcome.
    assert cli(home, "experiments", "watch", "watched").returncode == 0


@pytest.mark.timeout(900)
def test_watch_exits_non_zero_when_the_experiment_fails(
    platform: Platform, home: dict[str, str], applied: Path
) -> None:
    # No layer of the built-in model has this name: the task fails as it starts.
    start(platform, "doomed", lora_target_modules=["no_such_layer"])
    watched = cli(home, "experiments", "watch", "doomed")
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert "experiment doomed failed" in watched.stderr
    assert "do not fit this model" in watched.stderr


@pytest.mark.timeout(900)
def test_the_async_sdk_watches_an_experiment_to_its_end(platform: Platform, applied: Path) -> None:
    start(platform, "watched-async", epochs=8)

    async def watched() -> list[dict[str, Any]]:
        async with AsyncClient(platform.url, platform.token) as client:
            return [event async for event in client.watch("watched-async")]

    events = asyncio.run(watched())
    types = [e["type"] for e in events]
    assert types[-1] == "experiment.succeeded", types
    assert "task.progress" in types and "task.succeeded" in types
    assert all(e["subject"].startswith("experiments/watched-async") for e in events)
