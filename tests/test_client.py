"""The SDK (tunelab.client) in-process, sync and async: requests are checked with the
server's models before they leave, answers are read into the views the server checks
its answers against, refusals raise ApiError with the server's details."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tests.test_http import Api, app_api, make_settings
from tunelab.client import ApiError, AsyncClient, Client
from tunelab.db.tables import Dataset
from tunelab.views import DatasetView, GroupView


@pytest.fixture
def api(tmp_path: Path, redis_url: str, queues: dict[str, str]) -> Iterator[Api]:
    with app_api(make_settings(tmp_path, redis_url, queues)) as api:
        api.client.headers["authorization"] = f"Bearer {api.tokens['acme']}"
        yield api


def test_an_upload_streams_its_files_and_tells_how_much_went(api: Api, tmp_path: Path) -> None:
    train = tmp_path / "faq.csv"
    train.write_text("question,answer\n" + "".join(f"q{i}?,a{i}\n" for i in range(2000)))
    sent: list[int] = []
    client = Client("http://testserver", http=api.client)
    dataset = client.datasets.upload("faq", train, validate=train, on_bytes=sent.append)
    assert isinstance(dataset, DatasetView) and dataset.status == "pending"
    assert sum(sent) == 2 * train.stat().st_size and len(sent) >= 2
    with api.db.session() as session:
        stored = session.query(Dataset).filter_by(name="faq").one()
        assert stored.source["files"] == {"train": "faq.csv", "validate": "faq.csv"}
    assert [d.name for d in client.datasets.list()] == ["faq"]


def test_a_request_is_checked_with_the_servers_model_before_it_is_sent(api: Api) -> None:
    client = Client("http://testserver", http=api.client)
    with pytest.raises(ValidationError, match="lowercase"):
        client.parameter_groups.create({"name": "Not A Label"})
    group = client.parameter_groups.create({"name": "lora", "preset": "tiny-lora"})
    assert isinstance(group, GroupView) and group.parameters["lora_rank"] == 16
    with pytest.raises(ApiError) as taken:
        client.parameter_groups.create({"name": "lora"})
    assert taken.value.status == 409 and taken.value.code == "conflict"
    with pytest.raises(ApiError) as refused:
        client.experiments.create(
            {
                "name": "exp",
                "tasks": [
                    {
                        "name": "t1",
                        "base_model": "tiny-llama",
                        "dataset": "missing",
                        "parameter_group": "lora",
                    }
                ],
            }
        )
    assert refused.value.status == 422
    assert refused.value.details[0]["field"] == "tasks[0].dataset"
    with pytest.raises(ApiError) as unknown:
        client.experiments.get("nothing")
    assert unknown.value.status == 404


def test_the_async_client_sends_the_same_calls(api: Api, tmp_path: Path) -> None:
    train = tmp_path / "faq.csv"
    train.write_text("question,answer\nq?,a\n")
    app = api.client.app
    token = api.client.headers["authorization"].removeprefix("Bearer ")

    async def run() -> tuple[DatasetView, list[DatasetView]]:
        transport = httpx.ASGITransport(app=app)
        http = httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"authorization": f"Bearer {token}"},
        )
        async with AsyncClient("http://testserver", http=http) as client:
            made = await client.datasets.upload("faq", train)  # type: ignore[misc]
            listed = await client.datasets.list()  # type: ignore[misc]
            with pytest.raises(ApiError):
                await client.datasets.get("nothing")  # type: ignore[misc]
            return made, listed

    made, listed = asyncio.run(run())
    assert made.name == "faq" and [d.name for d in listed] == ["faq"]
