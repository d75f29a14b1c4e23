"""`tunelab datasets upload` (a bar for the bytes sent, then one for the checks, then
the first problems with their lines) and `tunelab models download`."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from tunelab.client import Client
from tunelab.commands.show import console, problems

CHECK_POLL_S = 0.5
CHECKING = ("pending", "validating")


def _bytes_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
    )


def upload_and_wait(
    client: Client,
    name: str,
    file: Path,
    validate: Path | None = None,
    test: Path | None = None,
    metadata: dict[str, Any] | None = None,
    wait: bool = True,
) -> bool:
    """Upload the files with a bar; with `wait`, follow the checks and print the first
    problems. Whether the dataset is (or, not waiting, may become) ready."""
    files = [p for p in (file, validate, test) if p is not None]
    with _bytes_bar() as bar:
        sending = bar.add_task(f"uploading {name}", total=sum(p.stat().st_size for p in files))
        client.datasets.upload(
            name,
            file,
            validate,
            test,
            on_bytes=lambda n: bar.advance(sending, n),
            **(metadata or {}),
        )
    if not wait:
        console.print(f"dataset {name} uploaded; it is being checked")
        return True
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as checks:
        checks.add_task(f"checking {name}", total=None)
        dataset = client.datasets.get(name)
        while dataset.status in CHECKING:
            time.sleep(CHECK_POLL_S)
            dataset = client.datasets.get(name)
    if dataset.status != "ready":
        problems(dataset.error)
        return False
    rows = {split: s.get("rows") for split, s in dataset.splits.items()}
    console.print(f"dataset {name} is ready: {dataset.kind}, rows {rows}")
    for warning in dataset.warnings[:5]:
        console.print(f"[yellow]warning: {warning.get('message')}")
    return True


def download(client: Client, name: str, folder: Path) -> int:
    """The model's files, unpacked into `folder`, with a bar for the bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f".{name}.tar"

    def read(response: httpx.Response) -> None:
        total = int(response.headers.get("content-length") or 0) or None
        with _bytes_bar() as bar, archive.open("wb") as out:
            receiving = bar.add_task(f"downloading {name}", total=total)
            for chunk in response.iter_bytes():
                out.write(chunk)
                bar.advance(receiving, len(chunk))

    try:
        client.models.download(name, read)
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")  # no paths outside the folder
    finally:
        archive.unlink(missing_ok=True)
    console.print(f"model {name} is in {folder}")
    return 0
