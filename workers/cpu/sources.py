"""Fetching a dataset from a remote address: size cap, timeout, and no SSRF.

Private-network, loopback and link-local addresses are refused unless the operator
allows them (TUNELAB_ALLOW_PRIVATE_SOURCES), on every redirect hop too, on the connection
itself (tunelab.net: no second resolution to rebind).
"""

from __future__ import annotations

import socket
import time
from typing import IO, Any
from urllib.parse import urljoin

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from tunelab import net
from tunelab.errors import PermanentFailure
from tunelab.net import AddressRefused, Resolver, check_scheme, pinned_client

MAX_REDIRECTS = 5
TOTAL_TIME_FACTOR = 5
"""A whole download may take this many times the per-read timeout."""
CHUNK = 1 << 16


class SourceError(PermanentFailure):
    """The remote source cannot be used; the message says why."""

    code = "source_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, [{"code": code, "field": "source.uri", "message": message}])
        self.problem_code = code


class SourceUnavailable(Exception):
    """The source failed in a way that may pass (5xx, 429, timeout, connection): the
    actor lets it propagate so that Dramatiq retries with back-off."""


TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
PERMANENT_S3 = {"NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidBucketName", "404", "403"}


def check_address(url: str, allow_private: bool) -> None:
    """The scheme and where the URL resolves, as SourceError (a fetch checks again, on
    its connection)."""
    try:
        net.check_address(url, allow_private)
    except AddressRefused as exc:
        raise _refused(exc) from None


def _refused(exc: AddressRefused) -> SourceError:
    code = "source_unreachable" if exc.code == "address_unresolved" else "source_refused"
    return SourceError(code, str(exc))


def fetch_http(
    url: str,
    sink: IO[bytes],
    *,
    max_bytes: int,
    timeout_s: float,
    allow_private: bool,
    resolve: Resolver = socket.getaddrinfo,
) -> int:
    """Stream `url` into `sink`; returns the byte count. Raises SourceError. Every hop
    connects only to an address its own resolution found public (tunelab.net)."""
    with pinned_client(allow_private, timeout_s, resolve) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                check_scheme(url)
            except AddressRefused as exc:
                raise _refused(exc) from None
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code in TRANSIENT_HTTP:
                        raise SourceUnavailable(f"{url} answered HTTP {response.status_code}.")
                    if not response.is_success:
                        raise SourceError(
                            "source_unreachable", f"{url} answered HTTP {response.status_code}."
                        )
                    deadline = time.monotonic() + timeout_s * TOTAL_TIME_FACTOR
                    return _copy(response.iter_bytes(CHUNK), sink, max_bytes, url, deadline)
            except AddressRefused as exc:
                code = (
                    "source_unreachable" if exc.code == "address_unresolved" else "source_refused"
                )
                raise SourceError(code, str(exc)) from None
            except httpx.TransportError as exc:  # timeouts, refused or reset connections
                raise SourceUnavailable(f"Fetching {url} failed: {exc!r}.") from None
    raise SourceError("source_unreachable", f"{url} redirected more than {MAX_REDIRECTS} times.")


def fetch_s3(client: Any, uri: str, sink: IO[bytes], *, max_bytes: int) -> int:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in PERMANENT_S3:
            raise SourceError("source_unreachable", f"Cannot read {uri}: {exc}.") from None
        raise SourceUnavailable(f"Reading {uri} failed: {exc}.") from None
    except BotoCoreError as exc:  # endpoint unreachable, read timeouts
        raise SourceUnavailable(f"Reading {uri} failed: {exc}.") from None
    return _copy(body.iter_chunks(CHUNK), sink, max_bytes, uri, None)


def _copy(chunks: Any, sink: IO[bytes], max_bytes: int, where: str, deadline: float | None) -> int:
    size = 0
    for chunk in chunks:
        # The client's timeout is per read: a server dripping bytes would never trip it.
        if deadline is not None and time.monotonic() > deadline:
            raise SourceError(
                "source_too_slow", f"{where} is sending too slowly; the download was stopped."
            )
        size += len(chunk)
        if size > max_bytes:
            raise SourceError(
                "source_too_large",
                f"{where} is larger than {max_bytes >> 20} MB, the limit for a dataset file.",
            )
        sink.write(chunk)
    return size
