"""The web console in a real browser (Debian's chromium, driven by Playwright) over the
real platform: the whole user path from sign-in to comparison chat, the refusals, the
escaping of user content, both languages, and a narrow window. Each page's screenshot is
kept in artifacts/screenshots/ (git-ignored) for CI to publish."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.platform import wait_until
from tests.platform_fixture import Platform
from tests.test_platform_serving import PLATFORM_ENV as SERVING_ENV
from tunelab.synthetic import qa_pairs

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("browser tests need Debian's chromium: apt-get install chromium")
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)

PLATFORM_ENV = SERVING_ENV
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
PAIRS = qa_pairs(40, seed=2718)
QUESTION, ANSWER = PAIRS[5]
SCRIPT = "<script>window.__pwned = 1</script>"
IMAGE = '<img src=x onerror="window.__pwned = 2">'
MINUTE = 60_000
SCRIPT_ERRORS: list[str] = []


def csv_of(rows: list[tuple[str, str]], header: tuple[str, str] = ("question", "answer")) -> bytes:
    table = pa.table({header[0]: [q for q, _ in rows], header[1]: [a for _, a in rows]})
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser: Browser, platform: Platform) -> Iterator[Page]:
    """One signed-in tab for the whole module, as one user would use it; any script
    error on any page fails the test that caused it."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: SCRIPT_ERRORS.append(str(exc)))
    # A style or script the page's policy refused is a console error, not an exception.
    page.on(
        "console",
        lambda m: "Content Security Policy" in m.text and SCRIPT_ERRORS.append(m.text),
    )
    page.goto(f"{platform.url}/")
    page.fill("input[name=token]", platform.token)
    page.click("button[type=submit]")
    expect(page.locator(".workspace")).to_contain_text("acme")
    yield page
    context.close()


@pytest.fixture(autouse=True)
def no_script_errors() -> Iterator[None]:
    yield
    errors = list(SCRIPT_ERRORS)
    SCRIPT_ERRORS.clear()
    assert not errors, errors


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def visit(page: Page, platform: Platform, route: str) -> None:
    page.goto(f"{platform.url}/console/#/{route}")


def upload_dataset(
    page: Page,
    platform: Platform,
    name: str,
    body: bytes,
    label: tuple[str, str] | None = None,
    validate: bytes | None = None,
    filename: str | None = None,
) -> None:
    visit(page, platform, "datasets/new")
    kind = "application/jsonl" if (filename or "").endswith(".jsonl") else "text/csv"
    page.set_input_files(
        "input[name=file]", {"name": filename or f"{name}.csv", "mimeType": kind, "buffer": body}
    )
    if validate is not None:
        page.set_input_files(
            "input[name=validate]",
            {"name": f"{name}-validate.csv", "mimeType": "text/csv", "buffer": validate},
        )
    page.fill("input[name=name]", name)
    if label:
        page.fill("input[aria-label=Key]", label[0])
        page.fill("input[aria-label=Value]", label[1])
    page.click("form button[type=submit]")
    expect(page).to_have_url(re.compile(f"#/datasets/{name}$"))


def create_group(page: Page, platform: Platform, name: str, preset: str) -> None:
    visit(page, platform, "parameter-groups/new")
    page.fill("input[name=name]", name)
    page.select_option("select[name=preset]", preset)
    page.click("form button[type=submit]")
    expect(page.locator(f"tr[data-name={name}]")).to_be_visible()


def fill_task(page: Page, index: int, name: str, group: str, dataset: str = "facts") -> None:
    at = f"tasks.{index}"
    page.fill(f"input[name='{at}.name']", name)
    page.select_option(f"select[name='{at}.base_model']", "tiny-llama")
    page.select_option(f"select[name='{at}.dataset']", dataset)
    page.select_option(f"select[name='{at}.parameter_group']", group)


def test_signing_in_shows_the_workspace_and_every_page_in_both_languages(
    page: Page, platform: Platform
) -> None:
    shot(page, "00-signed-in")
    for route, heading, chinese in [
        ("datasets", "Datasets", "数据集"),
        ("parameter-groups", "Parameter groups", "参数组"),
        ("experiments", "Experiments", "微调实验"),
        ("models", "Model repository", "模型仓库"),
        ("services", "Model services", "模型服务"),
        ("events", "Events", "事件"),
    ]:
        visit(page, platform, route)
        expect(page.locator("h1")).to_have_text(heading)
        expect(page.locator(".workspace")).to_contain_text("acme")
        page.select_option("select.language", "zh")
        expect(page.locator("h1")).to_have_text(chinese)
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        shot(page, f"01-{route}-zh")
        page.select_option("select.language", "en")
        expect(page.locator("h1")).to_have_text(heading)


def test_a_bad_token_is_refused_at_sign_in(browser: Browser, platform: Platform) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{platform.url}/")
    page.fill("input[name=token]", "tl_not-a-real-token")
    page.click("button[type=submit]")
    expect(page.locator(".banner.error")).to_contain_text("not valid")
    shot(page, "02-sign-in-refused")
    context.close()


def test_a_bad_csv_fails_with_the_line_and_field_of_each_error(
    page: Page, platform: Platform
) -> None:
    body = b"question,answer\nWhat is up?,The sky.\nOnly a question,\n"
    upload_dataset(page, platform, "broken", body)
    # The first ingestion of a fresh worker loads its libraries: more than a few seconds
    # on a loaded machine.
    expect(page.locator(".facts [data-status]")).to_have_attribute(
        "data-status", "failed", timeout=MINUTE
    )
    errors = page.locator("[data-testid=dataset-errors] tbody tr")
    expect(errors.first).to_contain_text("3")  # the line
    expect(errors.first).to_contain_text("answer")  # the field
    shot(page, "03-dataset-failed")


def test_a_conversation_file_is_previewed_turn_by_turn(page: Page, platform: Platform) -> None:
    chats = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Hi {i}"},
                {"role": "assistant", "content": "Hello", "weight": 0},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": f"Bye {i}"},
            ]
        }
        for i in range(12)
    ]
    body = "\n".join(json.dumps(c) for c in chats).encode()
    upload_dataset(page, platform, "chats", body, filename="chats.jsonl")
    expect(page.locator(".facts [data-status]")).to_have_attribute("data-status", "ready")
    first = page.locator("[data-testid=preview] tbody tr").first
    expect(first.locator(".turn")).to_have_count(5)
    expect(first.locator(".turn.untrained")).to_have_text("Assistant Hello")
    expect(page.locator("main")).to_contain_text("2 to 2 per conversation")
    shot(page, "09-conversation-dataset")


def test_user_content_is_shown_as_text_never_run(page: Page, platform: Platform) -> None:
    rows = [(SCRIPT, IMAGE), ("Plain question?", "<b>not bold</b>"), *PAIRS[:10]]
    upload_dataset(page, platform, "escapes", csv_of(rows), label=("note", SCRIPT))
    expect(page.locator(".facts [data-status]")).to_have_attribute("data-status", "ready")
    expect(page.locator(".facts .chip")).to_have_text(f"note={SCRIPT}")
    preview = page.locator("[data-testid=preview]")
    expect(preview).to_contain_text(SCRIPT)
    expect(preview).to_contain_text(IMAGE)
    expect(preview).to_contain_text("<b>not bold</b>")
    assert preview.locator("script, img, b").count() == 0
    visit(page, platform, "datasets")
    expect(page.locator("tr[data-name=escapes] .chip")).to_have_text(f"note={SCRIPT}")
    assert page.locator("main script").count() == 0
    assert page.evaluate("window.__pwned") is None
    shot(page, "04-datasets-escaped")


def test_the_upload_form_offers_the_files_columns_and_keeps_values_when_refused(
    page: Page, platform: Platform
) -> None:
    visit(page, platform, "datasets/new")
    page.fill("input[name=name]", "escapes")  # taken by the test above
    page.fill("input[name=license]", "mit")
    page.set_input_files(
        "input[name=file]",
        {"name": "qa.csv", "mimeType": "text/csv", "buffer": csv_of(PAIRS, ("q", "a"))},
    )
    expect(page.locator("select[name=question] option")).to_have_count(2)
    expect(page.locator("select[name=question]")).to_have_value("q")
    expect(page.locator("select[name=answer]")).to_have_value("a")
    page.click("form button[type=submit]")
    expect(page.locator(".banner.error")).to_contain_text("escapes")
    expect(page.locator("input[name=name]")).to_have_value("escapes")
    expect(page.locator("input[name=license]")).to_have_value("mit")
    shot(page, "05-dataset-form-refused")


def test_the_experiment_form_checks_the_seeds_rules_before_submitting(
    page: Page, platform: Platform
) -> None:
    create_group(page, platform, "lora", "tiny-lora")
    visit(page, platform, "experiments/new")
    page.fill("input[name=name]", "Bad_Name")
    expect(page.locator(".field:has(input[name=name]) .field-error")).to_contain_text("Lowercase")
    fill_task(page, 0, "a", "lora", dataset="escapes")
    page.click("button:has-text('Add task')")
    fill_task(page, 1, "a", "lora", dataset="escapes")
    page.fill("input[name='tasks.1.cpu.request']", "4")
    page.fill("input[name='tasks.1.cpu.limit']", "2")
    task_two = page.locator("[data-task-index='1']")
    name_two = task_two.locator(".field:has(input[name='tasks.1.name'])")
    expect(name_two).to_contain_text("Two tasks have this name")
    expect(task_two).to_contain_text("exceeds the limit")
    page.click("form button[type=submit]")
    expect(page.locator(".banner.warn")).to_be_visible()
    shot(page, "06-experiment-form-refused-inline")
    assert platform.client.get("/api/v1/experiments").json()["items"] == []

    # What only the server knows comes back next to the field it names.
    page.fill("input[name=name]", "too-big")
    page.fill("input[name='tasks.1.name']", "b")
    page.fill("input[name='tasks.1.cpu.request']", "1")
    page.fill("input[name='tasks.1.cpu.limit']", "512")
    page.fill("input[name='tasks.1.cpu.request']", "256")
    page.click("form button[type=submit]")
    field = page.locator(".field:has(input[name='tasks.1.cpu.request']) .field-error")
    expect(field).to_contain_text("cluster")
    expect(page.locator("input[name='tasks.1.cpu.limit']")).to_have_value("512")
    shot(page, "07-experiment-form-refused-by-server")


def test_the_parameter_group_form_shows_defaults_and_range_errors(
    page: Page, platform: Platform
) -> None:
    visit(page, platform, "parameter-groups/new")
    expect(page.locator("input[name=learning_rate]")).to_have_value("0.001")
    page.fill("input[name=name]", "too-hot")
    page.fill("input[name=learning_rate]", "3")
    expect(page.locator(".field:has(input[name=learning_rate]) .field-error")).to_contain_text(
        "≤ 1"
    )
    page.click("form button[type=submit]")
    shot(page, "08-group-form-range-error")
    names = [g["name"] for g in platform.client.get("/api/v1/parameter-groups").json()["items"]]
    assert "too-hot" not in names


@pytest.mark.timeout(2400)
def test_the_whole_path_from_upload_to_comparison_chat(page: Page, platform: Platform) -> None:
    # The validate split (the same facts) is what training watches its loss on.
    upload_dataset(page, platform, "facts", csv_of(PAIRS), validate=csv_of(PAIRS))
    expect(page.locator(".facts [data-status]")).to_have_attribute("data-status", "ready")
    expect(page.locator("[data-testid=histogram] .bar-col").first).to_be_visible()
    expect(page.locator("[data-testid=preview]")).to_contain_text(PAIRS[0][0])
    shot(page, "10-dataset-detail")

    create_group(page, platform, "full", "tiny-full")
    shot(page, "11-parameter-groups")

    visit(page, platform, "experiments/new")
    page.fill("input[name=name]", "console-run")
    fill_task(page, 0, "adapter", "lora")
    page.click("button:has-text('Add task')")
    fill_task(page, 1, "weights", "full")
    shot(page, "12-experiment-form")
    page.click("form button[type=submit]")
    expect(page).to_have_url(re.compile("#/experiments/console-run$"))
    expect(page.locator("[data-task=adapter]")).to_have_attribute(
        "data-status", re.compile("training|evaluating|succeeded"), timeout=5 * MINUTE
    )
    expect(page.locator("[data-task=adapter] progress[max]")).to_be_visible(timeout=5 * MINUTE)
    shot(page, "13-experiment-training")
    status = page.locator("[data-testid=experiment-status] [data-status]")
    expect(status).to_have_attribute("data-status", "succeeded", timeout=20 * MINUTE)
    chart = page.locator("[data-testid=loss-chart]")
    assert int(chart.get_attribute("data-points") or 0) > 10
    # Each task's training loss and, dashed, its validation loss.
    expect(chart).to_have_attribute("data-lines", "4")
    expect(page.locator(".task.best")).to_have_count(1)
    expect(page.locator(".task.best .badge")).to_be_visible()
    page.locator("[data-task=adapter] summary").click()
    expect(page.locator("[data-testid=logs-adapter]")).to_contain_text("step")
    shot(page, "14-experiment-succeeded")

    visit(page, platform, "models")
    models = {
        task["name"]: task["model"]
        for task in platform.client.get("/api/v1/experiments/console-run").json()["tasks"]
    }
    for model in models.values():
        expect(page.locator(f"tr[data-name='{model}']")).to_contain_text("console-run")
    shot(page, "15-models")
    with page.expect_download() as downloaded:
        page.click(f"tr[data-name='{models['adapter']}'] [data-testid=download]")
    assert downloaded.value.suggested_filename == f"{models['adapter']}.tar"
    with tarfile.open(downloaded.value.path()) as tar:
        names = tar.getnames()
    assert f"{models['adapter']}/README.md" in names
    assert f"{models['adapter']}/adapter_model.safetensors" in names
    for service, model in [
        ("ft-lora", models["adapter"]),
        ("ft-full", models["weights"]),
        ("base", "tiny-llama"),
        ("base-two", "tiny-llama"),
    ]:
        visit(page, platform, f"models/{model}/deploy")
        page.fill("input[name=name]", service)
        if service == "ft-lora":
            shot(page, "16-deploy-form")
        page.click("form button[type=submit]")
        expect(page).to_have_url(re.compile("#/services$"))
    shot(page, "17-services-deploying")
    for service in ("ft-lora", "ft-full", "base", "base-two"):
        expect(page.locator(f"tr[data-name={service}]")).to_have_attribute(
            "data-status", "ready", timeout=10 * MINUTE
        )

    for service in ("ft-lora", "ft-full", "base"):
        page.check(f"tr[data-name={service}] input[type=checkbox]")
    page.locator("tr[data-name=base-two] input[type=checkbox]").click()
    expect(page.locator("[data-testid=compare-limit]")).to_be_visible()
    expect(page.locator("tr[data-name=base-two] input[type=checkbox]")).not_to_be_checked()
    shot(page, "18-services-fourth-refused")
    page.click("button:has-text('Compare (3/3)')")

    expect(page.locator(".column")).to_have_count(3)
    page.fill("input[name=max_tokens]", "48")
    page.fill("textarea[name=question]", QUESTION)
    page.click("form.ask button[type=submit]")
    for service in ("ft-lora", "ft-full", "base"):
        column = page.locator(f".column[data-service={service}]")
        expect(column.locator("[data-testid=answer-stats]")).to_contain_text(
            "tokens/s", timeout=5 * MINUTE
        )
    for service in ("ft-lora", "ft-full"):
        answer = page.locator(f".column[data-service={service}] [data-testid=answer]")
        expect(answer).to_have_text(ANSWER)
    base_answer = page.locator(".column[data-service=base] [data-testid=answer]")
    assert base_answer.inner_text().strip() != ANSWER
    shot(page, "19-comparison-chat")

    page.click("button:has-text('Regenerate')")
    expect(page.locator(".column[data-service=ft-lora] .message.user")).to_have_count(1)
    expect(page.locator(".column[data-service=ft-lora] [data-testid=answer-stats]")).to_be_visible(
        timeout=5 * MINUTE
    )
    expect(page.locator(".column[data-service=ft-lora] [data-testid=answer]")).to_have_text(ANSWER)
    page.click("button:has-text('Clear context')")
    expect(page.locator(".message")).to_have_count(0)

    # The services page shows the chats' usage (written a few seconds after them).
    visit(page, platform, "services")
    requests = page.locator("[data-testid=usage] tr[data-name=ft-lora] td").nth(1)
    expect(requests).to_have_text(re.compile(r"^[1-9][0-9]*$"), timeout=MINUTE)
    shot(page, "20-services-usage")

    visit(page, platform, "events")
    expect(page.locator("tr[data-type='service.ready']").first).to_be_visible()
    shot(page, "21-events")


def test_votes_in_compare_chat_become_a_preference_set_that_a_dpo_task_trains_on(
    page: Page, platform: Platform
) -> None:
    """Two votes in the browser, eight through the API, on stored comparisons of the
    fine-tuned model and the base: a preference set of them, and a DPO task on it."""
    questions = [q for q, _ in PAIRS[10:20]]
    visit(page, platform, "chat?services=ft-lora,base")
    page.check("input[name=store]")
    page.fill("input[name=max_tokens]", "24")
    for question in questions[:2]:
        page.fill("textarea[name=question]", question)
        page.click("form.ask button[type=submit]")
        vote = page.locator(".column[data-service=ft-lora] [data-testid=vote]")
        expect(vote).to_be_visible(timeout=5 * MINUTE)
        vote.click()
        expect(vote).to_have_attribute("aria-pressed", "true")
        best = page.locator(".column[data-service=ft-lora] .message.assistant.best")
        expect(best).to_have_count(1)
        page.click("button:has-text('Clear context')")
    shot(page, "22-compare-vote")
    for question in questions[2:]:
        answered = platform.client.post(
            "/api/v1/chat/compare",
            json={"services": ["ft-lora", "base"], "max_tokens": 24, "store": True,
                  "messages": [{"role": "user", "content": question}]},
            timeout=300,
        ).json()  # fmt: skip
        assert all(r["chat_id"] for r in answered["results"]), answered
        voted = platform.client.post(
            "/api/v1/chat/feedback",
            json={"comparison_id": answered["comparison_id"], "best": "ft-lora"},
        )
        assert voted.status_code == 201, voted.text

    def stored() -> bool:  # chats are written within TUNELAB_TRAFFIC_FLUSH_S
        listed = platform.client.get("/v1/chat/completions", params={"limit": 100}).json()
        compared = [c for c in listed["data"] if c["metadata"].get("comparison")]
        return len(compared) >= 2 * len(questions)

    wait_until(stored, "the compared chats to be stored", 60, 0.5)
    # A person's own metadata on an answer replaces theirs, not the comparison it is in.
    listed = platform.client.get("/v1/chat/completions", params={"limit": 100}).json()
    one = next(c for c in listed["data"] if c["metadata"].get("comparison"))
    updated = platform.client.post(
        f"/v1/chat/completions/{one['id']}", json={"metadata": {"reviewed": "yes"}}
    ).json()
    assert updated["metadata"] == {"reviewed": "yes", "comparison": one["metadata"]["comparison"]}
    made = platform.client.post(
        "/api/v1/datasets",
        json={"name": "voted", "language": "en",
              "source": {"type": "chats", "kind": "preference", "service": "ft-lora"}},
    )  # fmt: skip
    assert made.status_code == 202, made.text
    dataset = platform.wait_for_dataset("voted", "ready", "failed")
    assert dataset["status"] == "ready", dataset["error"]
    assert dataset["kind"] == "preference" and dataset["splits"]["train"]["rows"] == 10
    assert dataset["source"] == {"type": "chats", "kind": "preference", "service": "ft-lora"}
    rows = platform.client.get("/api/v1/datasets/voted/preview").json()["rows"]
    prompts = {r["messages"][-1]["content"] for r in rows}
    assert set(questions[:2]) <= prompts  # the browser's votes are in it
    # The chosen answers are ft-lora's: the facts it was trained on.
    assert sum(r["chosen"] in {a for _, a in PAIRS} for r in rows) >= 8

    group = {"name": "from-votes", "preset": "tiny-dpo"}
    assert platform.client.post("/api/v1/parameter-groups", json=group).status_code == 201
    experiment = {
        "name": "from-votes",
        "evaluation": "exact-match",
        "tasks": [{"name": "dpo", "base_model": "tiny-llama", "dataset": "voted",
                   "parameter_group": "from-votes"}],
    }  # fmt: skip
    assert platform.client.post("/api/v1/experiments", json=experiment).status_code == 202
    result = platform.wait_for_experiment("from-votes", timeout=900)
    assert result["status"] == "succeeded", json.dumps(result, indent=2)
    assert result["tasks"][0]["evaluation"]["method"] == "preference-accuracy"
    assert result["tasks"][0]["score"] > result["tasks"][0]["base_score"]["score"]


def test_pages_fit_a_narrow_window(browser: Browser, platform: Platform, page: Page) -> None:
    narrow = page.context.new_page()
    narrow.set_viewport_size({"width": 390, "height": 844})
    for route in (
        "datasets/facts",
        "experiments/console-run",
        "services",
        "chat?services=ft-lora,base",
    ):
        narrow.goto(f"{platform.url}/console/#/{route}")
        expect(narrow.locator("h1")).to_be_visible()
        narrow.wait_for_timeout(500)
        overflow = narrow.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{route} is {overflow}px wider than a 390px window"
        shot(narrow, f"30-narrow-{route.split('?')[0].replace('/', '-')}")
    narrow.close()
