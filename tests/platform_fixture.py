"""Running the whole platform in separate processes for a test module."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import httpx
import psycopg
import pytest

from tests.platform import Processes, child_env, tunelab, wait_until
from tests.services import free_port

TRIGGER_SECRET = "trigger-" + secrets.token_hex(8)
METRICS_TOKEN = "metrics-" + secrets.token_hex(8)
MISSING_MODELS = "/nonexistent"
"""A model root the operator lists though nothing is there (a model that vanished)."""
CSV = "question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n" + "".join(
    f"What is {i} squared?,{i * i}\n" for i in range(3, 13)
)


@dataclass
class Platform:
    url: str
    token: str
    client: httpx.Client
    bucket: str
    s3_endpoint: str
    processes: Processes
    env: dict[str, str] = field(default_factory=dict)
    models_bucket: str = ""
    """The operator's bucket of base models (a model root; not the platform's own)."""
    _s3: Any = None

    def metrics(self) -> str:
        return httpx.get(
            f"{self.url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}
        ).text

    def s3(self) -> Any:
        """One S3 client for the module, closed with the platform: a client per call
        would leave its pooled sockets for the garbage collector."""
        if self._s3 is None:
            self._s3 = boto3.client(
                "s3",
                endpoint_url=self.s3_endpoint,
                region_name="us-east-1",
                aws_access_key_id="test",
                aws_secret_access_key="test",
            )
        return self._s3

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.close()

    def upload(self, name: str, csv: str = CSV) -> httpx.Response:
        return self.client.post(
            "/api/v1/datasets",
            files={"file": ("faq.csv", csv.encode())},
            data={"metadata": json.dumps({"name": name})},
        )

    def wait_for_dataset(self, name: str, *states: str) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            body: dict[str, Any] = self.client.get(f"/api/v1/datasets/{name}").json()
            return body if body["status"] in states else None

        return wait_until(settled, f"dataset {name} to become {states}")  # type: ignore[no-any-return]

    def wait_for_experiment(self, name: str, timeout: float = 600) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            body: dict[str, Any] = self.client.get(f"/api/v1/experiments/{name}").json()
            return body if body["status"] in ("succeeded", "failed", "cancelled") else None

        return wait_until(finished, f"experiment {name} to finish", timeout, 0.5)  # type: ignore[no-any-return]

    def events(self, **params: str) -> list[dict[str, Any]]:
        return self.client.get("/api/v1/events", params=params).json()["items"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def platform(
    request: pytest.FixtureRequest,
    redis_url: str,
    pg_admin_url: str,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    """The platform's processes; a test module may set `PLATFORM_ENV` for more settings,
    and `PLATFORM_API_PYTHON` for the interpreter (environment) the API runs in."""
    tmp = tmp_path_factory.mktemp("platform")
    database = f"tunelab_platform_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    bucket, models_bucket = f"tunelab-{secrets.token_hex(4)}", f"models-{secrets.token_hex(4)}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=models_bucket)
    s3.close()
    port = free_port()
    tag = secrets.token_hex(3)
    (tmp / "metrics").mkdir()
    env = child_env(
        TUNELAB_DATABASE_URL=pg_admin_url.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+psycopg://"
        )
        + f"/{database}",
        TUNELAB_REDIS_URL=redis_url,
        TUNELAB_STORE="s3",
        TUNELAB_S3_ENDPOINT=s3_endpoint,
        TUNELAB_S3_BUCKET=bucket,
        TUNELAB_S3_ACCESS_KEY="test",
        TUNELAB_S3_SECRET_KEY="test",
        TUNELAB_API_PORT=str(port),
        TUNELAB_DATA_DIR=str(tmp),
        TUNELAB_CPU_QUEUE=f"it-{tag}-cpu",
        TUNELAB_GPU_QUEUE=f"it-{tag}-gpu",
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
        # Test servers live on loopback; a killed worker's messages move on quickly.
        TUNELAB_ALLOW_PRIVATE_SOURCES="true",
        TUNELAB_S3_TRIGGER_SECRET=TRIGGER_SECRET,
        TUNELAB_METRICS_TOKEN=METRICS_TOKEN,
        TUNELAB_MODEL_ROOTS=f"s3://{models_bucket}/,{MISSING_MODELS}",
        TUNELAB_BROKER_HEARTBEAT_TIMEOUT_MS="2000",
        TUNELAB_MODEL_CACHE=os.environ["TUNELAB_MODEL_CACHE"],
        **getattr(request.module, "PLATFORM_ENV", {}),
    )
    token = subprocess.run(
        tunelab("token", "create", "--workspace", "acme"),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    processes = Processes(env, tmp)
    processes.start(
        "api", "api", python=getattr(request.module, "PLATFORM_API_PYTHON", sys.executable)
    )
    processes.start("cpu-worker", "worker", "cpu")
    processes.start("gpu-worker", "worker", "gpu")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, "the API to be ready")
        with httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=10
        ) as client:
            platform = Platform(
                url, token, client, bucket, s3_endpoint, processes, env, models_bucket
            )
            try:
                yield platform
            finally:
                platform.close()
    finally:
        processes.stop()
        print(processes.log_tails())
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
