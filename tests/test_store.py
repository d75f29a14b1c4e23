"""Object stores: the local directory and S3 (against a real S3 server on loopback)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tunelab.store import ObjectNotFound, ObjectStore, PresignUnsupported
from tunelab.store.local import LocalStore
from tunelab.store.s3 import S3Store


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[S3Store]:
    store = S3Store(
        bucket=f"t-{os.urandom(4).hex()}",
        endpoint=s3_endpoint,
        access_key="test",
        secret_key="test",
    )
    store.ensure_bucket()
    yield store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    return request.getfixturevalue("s3")  # type: ignore[no-any-return]


def test_a_stored_object_reads_back_with_its_size_and_hash(store: ObjectStore) -> None:
    stored = store.put_bytes("datasets/d1/train.csv", b"question,answer\n")
    assert stored.size == 16
    assert stored.sha256 == hashlib.sha256(b"question,answer\n").hexdigest()
    assert store.read_bytes("datasets/d1/train.csv") == b"question,answer\n"
    assert store.exists("datasets/d1/train.csv")


def test_writing_the_same_key_again_overwrites(store: ObjectStore) -> None:
    store.put_bytes("k/a", b"first")
    store.put_bytes("k/a", b"second")
    assert store.read_bytes("k/a") == b"second"


def test_a_missing_object_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.open("nothing/here")
    assert not store.exists("nothing/here")


def test_deleting_a_prefix_removes_everything_under_it(store: ObjectStore) -> None:
    store.put_bytes("datasets/d1/a", b"1")
    store.put_bytes("datasets/d1/b", b"2")
    store.put_bytes("datasets/d2/a", b"3")
    store.delete_prefix("datasets/d1/")
    assert not store.exists("datasets/d1/a") and not store.exists("datasets/d1/b")
    assert store.exists("datasets/d2/a")


def test_a_local_key_cannot_escape_the_store_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="escapes"):
        LocalStore(tmp_path).put_bytes("../outside", b"x")


def test_the_local_store_says_it_has_no_presigned_urls(tmp_path: Path) -> None:
    with pytest.raises(PresignUnsupported, match="TUNELAB_STORE=s3"):
        LocalStore(tmp_path).presigned_url("k")


def test_a_large_file_goes_up_in_parts_and_keeps_its_checksum(s3: S3Store) -> None:
    data = os.urandom(20 << 20)  # over the 8 MB multipart threshold
    stored = s3.put_stream("checkpoints/t1/model.bin", io.BytesIO(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert s3.sha256("checkpoints/t1/model.bin") == stored.sha256
    assert s3.read_bytes("checkpoints/t1/model.bin") == data


def test_presigned_urls_let_a_client_put_and_get_without_credentials(s3: S3Store) -> None:
    put = s3.presigned_url("uploads/w1/faq.csv", "PUT")
    assert httpx.put(put, content=b"q,a\n").status_code == 200
    get = s3.presigned_url("uploads/w1/faq.csv", "GET")
    assert httpx.get(get).content == b"q,a\n"


def test_a_stored_object_knows_its_size(store: ObjectStore) -> None:
    store.put_bytes("k/sized", b"12345")
    assert store.size("k/sized") == 5
    with pytest.raises(ObjectNotFound):
        store.size("k/missing")
