"""S3 (or any S3-compatible server) through boto3."""

from __future__ import annotations

import hashlib
import io
from typing import IO, TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from tunelab.store import HashingReader, ObjectNotFound, StoredObject

if TYPE_CHECKING:
    from tunelab.settings import Settings

# Files over this size go up in parts, so a 50 MB dataset or a multi-GB checkpoint never
# needs one huge request; boto3 streams each part from the source.
TRANSFER = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)


def s3_client(
    endpoint: str | None, region: str, access_key: str | None, secret_key: str | None
) -> Any:
    """A boto3 S3 client that retries throttling and 5xx answers."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


class _Body(io.RawIOBase):
    """A GetObject body that reads b"" after its end instead of failing.

    urllib3 closes the response once it is exhausted, and readers such as
    TextIOWrapper read once more after the end, which then raises on a closed file.
    """

    def __init__(self, body: Any) -> None:
        self._body = body
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        data = self._body.read(len(buffer))
        if not data:
            self._done = True
            return 0
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class S3Writer:
    """Sends parts of PART_BYTES as they fill; a small object goes up in one PUT."""

    PART_BYTES = 8 << 20

    def __init__(self, store: S3Store, key: str) -> None:
        self.store, self.key = store, key
        self.buffer = bytearray()
        self.digest = hashlib.sha256()
        self.size = 0
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.digest.update(data)
        self.size += len(data)
        if len(self.buffer) >= self.PART_BYTES:
            self._send_part()

    def _send_part(self) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:
            self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        etag = client.upload_part(
            Bucket=bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self.buffer),
        )["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})
        self.buffer.clear()

    def commit(self) -> StoredObject:
        client, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:
            client.put_object(Bucket=bucket, Key=self.key, Body=bytes(self.buffer))
        else:
            if self.buffer:
                self._send_part()
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        sha = self.digest.hexdigest()
        self.store.tag_sha256(self.key, sha)
        return StoredObject(self.key, self.size, sha)

    def abort(self) -> None:
        if self.upload_id is not None:
            self.store.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id
            )
        self.buffer.clear()


class S3Store:
    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.client = s3_client(endpoint, region, access_key, secret_key)

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_stream(self, key: str, stream: IO[bytes]) -> StoredObject:
        reader = HashingReader(stream)
        self.client.upload_fileobj(
            reader,
            self.bucket,
            key,
            Config=TRANSFER,
            ExtraArgs={"ChecksumAlgorithm": "SHA256"},
        )
        sha = reader.digest.hexdigest()
        self.tag_sha256(key, sha)
        return StoredObject(key, reader.size, sha)

    def tag_sha256(self, key: str, sha: str) -> None:
        # The hash is known only once the data is read; record it where readers find it.
        self.client.put_object_tagging(
            Bucket=self.bucket, Key=key, Tagging={"TagSet": [{"Key": "sha256", "Value": sha}]}
        )

    def writer(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        return self.put_stream(key, io.BytesIO(data))

    def open(self, key: str) -> IO[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in {"NoSuchKey", "404"}:
                raise ObjectNotFound(key) from None
            raise
        return io.BufferedReader(_Body(body), buffer_size=1 << 16)

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] in {"NoSuchKey", "404"}:
                raise ObjectNotFound(key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in {"NoSuchKey", "404"}:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""
        paginator = self.client.get_paginator("list_objects_v2")
        return sorted(
            o["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        )

    def presigned_url(self, key: str, method: str = "GET", expires_s: int = 3600) -> str:
        operation = {"GET": "get_object", "PUT": "put_object"}[method]
        return str(
            self.client.generate_presigned_url(
                operation, Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def sha256(self, key: str) -> str:
        tags = self.client.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return str(next(t["Value"] for t in tags if t["Key"] == "sha256"))

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def client_for(settings: Settings, store: object) -> Any:
    """An S3 client with the platform's credentials: the store's own when it is the S3
    store, else one made from the same settings (for buckets other than the platform's)."""
    own = getattr(store, "client", None)
    if own is not None:
        return own
    return s3_client(
        settings.s3_endpoint, settings.s3_region, settings.s3_access_key, settings.s3_secret_key
    )
