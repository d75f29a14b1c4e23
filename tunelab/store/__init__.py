"""Object store: one small interface, an S3 and a local-directory implementation.

Keys are derived from resource ids (see `keys`), so a retried write overwrites the
object it wrote before instead of adding a second one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from tunelab.settings import Settings


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


class ObjectWriter(Protocol):
    """An object written piece by piece; invisible until `commit`, gone after `abort`."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> StoredObject: ...
    def abort(self) -> None: ...


class ObjectStore(Protocol):
    scheme: str

    def writer(self, key: str) -> ObjectWriter: ...
    def put_stream(self, key: str, stream: IO[bytes]) -> StoredObject: ...
    def put_bytes(self, key: str, data: bytes) -> StoredObject: ...
    def open(self, key: str) -> IO[bytes]: ...
    def read_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def presigned_url(self, key: str, method: str = "GET", expires_s: int = 3600) -> str: ...
    def uri(self, key: str) -> str: ...
    def ping(self) -> None: ...


class ObjectNotFound(KeyError):
    """No object under that key."""


class PresignUnsupported(RuntimeError):
    """This backend cannot hand out presigned URLs."""


class HashingReader:
    """Wraps a stream and hashes and counts what is read through it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._stream.read(n)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk


def key_from_uri(uri: str) -> str:
    """The key part of `s3://bucket/key` or `local://key`."""
    scheme, _, rest = uri.partition("://")
    if scheme == "s3":
        return rest.partition("/")[2]
    return rest


def open_store(settings: Settings) -> ObjectStore:
    if settings.store == "s3":
        from tunelab.store.s3 import S3Store

        return S3Store(
            bucket=settings.s3_bucket,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
        )
    from tunelab.store.local import LocalStore

    return LocalStore(settings.data_dir / "objects")


class keys:
    @staticmethod
    def dataset_staging(dataset_id: str, split: str = "train") -> str:
        return f"staging/datasets/{dataset_id}/{split}.csv"

    @staticmethod
    def dataset_parquet(dataset_id: str, split: str = "train") -> str:
        return f"datasets/{dataset_id}/{split}.parquet"

    @staticmethod
    def batch_prefix(batch_id: str) -> str:
        return f"batches/{batch_id}/"

    @staticmethod
    def batch_file(batch_id: str, name: Literal["input", "output", "errors"]) -> str:
        """A batch's requests as uploaded, its answers, and the lines that failed."""
        return f"batches/{batch_id}/{name}.jsonl"

    @staticmethod
    def task_prefix(task_id: str) -> str:
        """A task's checkpoints, metrics, logs and result."""
        return f"tasks/{task_id}/"

    @staticmethod
    def task_file(
        task_id: str, name: Literal["metrics.jsonl", "logs.txt", "result.json", "base-score.json"]
    ) -> str:
        """One of a task's own records: metrics by step, its log, what it ended with, the
        base model's score (kept so that a resumed task does not score it again)."""
        return f"tasks/{task_id}/{name}"

    @staticmethod
    def task_checkpoints(task_id: str) -> str:
        return f"tasks/{task_id}/checkpoints/"

    @staticmethod
    def model_prefix(model_id: str) -> str:
        """A model's files: adapter or weights, tokenizer, model card."""
        return f"models/{model_id}/"

    @staticmethod
    def dataset_prefixes(dataset_id: str) -> tuple[str, ...]:
        """Every prefix a dataset's objects live under (for deletion)."""
        return (f"datasets/{dataset_id}/", f"staging/datasets/{dataset_id}/")
