"""Fetching a dataset from a remote address: size cap, timeout, and no SSRF.

Private-network, loopback and link-local addresses are refused unless the operator
allows them (TUNELAB_ALLOW_PRIVATE_SOURCES), on every redirect hop too.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from tunelab.errors import PermanentFailure

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
    """Refuse URLs that are not http(s) or that resolve to non-public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(
            "source_refused", f"Only http and https addresses can be fetched, not {url!r}."
        )
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise SourceError(
            "source_unreachable", f"Cannot resolve {parts.hostname!r}: {exc}."
        ) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise SourceError(
                "source_refused",
                f"{parts.hostname} resolves to a private or "
                f"loopback address ({address}); the operator has not allowed "
                "such sources.",
            )


def fetch_http(
    url: str, sink: IO[bytes], *, max_bytes: int, timeout_s: float, allow_private: bool
) -> int:
    """Stream `url` into `sink`; returns the byte count. Raises SourceError."""
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_address(url, allow_private)
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
