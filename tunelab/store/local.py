"""A directory on disk as an object store: the embedded default."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from tunelab.store import HashingReader, ObjectNotFound, PresignUnsupported, StoredObject

CHUNK = 1 << 20


class LocalWriter:
    def __init__(self, key: str, path: Path) -> None:
        self.key, self.path = key, path
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        self.file = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def commit(self) -> StoredObject:
        self.file.close()
        os.replace(self.tmp, self.path)
        return StoredObject(self.key, self.size, self.digest.hexdigest())

    def abort(self) -> None:
        self.file.close()
        Path(self.tmp).unlink(missing_ok=True)


class LocalStore:
    scheme = "local"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"object key escapes the store: {key!r}")
        return path

    def put_stream(self, key: str, stream: IO[bytes]) -> StoredObject:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        reader = HashingReader(stream)
        # Write beside the target and rename, so a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(key, reader.size, reader.digest.hexdigest())

    def writer(self, key: str) -> LocalWriter:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return LocalWriter(key, path)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        import io

        return self.put_stream(key, io.BytesIO(data))

    def open(self, key: str) -> IO[bytes]:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def presigned_url(self, key: str, method: str = "GET", expires_s: int = 3600) -> str:
        raise PresignUnsupported(
            "the local object store has no presigned URLs; use TUNELAB_STORE=s3"
        )

    def uri(self, key: str) -> str:
        return f"local://{key}"

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self.open(key) as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"object store directory is not writable: {self.root}")
