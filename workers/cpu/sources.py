"""Fetching a dataset from a remote address: size cap, timeout, and no SSRF.

Private-network, loopback and link-local addresses are refused unless the operator
allows them (TUNELAB_ALLOW_PRIVATE_SOURCES), on every redirect hop too.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpx

from tunelab.errors import PermanentFailure

MAX_REDIRECTS = 5
CHUNK = 1 << 16


class SourceError(PermanentFailure):
    """The remote source cannot be used; the message says why."""

    code = "source_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, [{"code": code, "field": "source.uri", "message": message}])
        self.problem_code = code


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
                    if not response.is_success:
                        raise SourceError(
                            "source_unreachable", f"{url} answered HTTP {response.status_code}."
                        )
                    return _copy(response.iter_bytes(CHUNK), sink, max_bytes, url)
            except httpx.TimeoutException:
                raise SourceError(
                    "source_unreachable", f"{url} did not answer within {timeout_s:g} s."
                ) from None
            except httpx.HTTPError as exc:
                raise SourceError("source_unreachable", f"Fetching {url} failed: {exc}.") from None
    raise SourceError("source_unreachable", f"{url} redirected more than {MAX_REDIRECTS} times.")


def fetch_s3(client: Any, uri: str, sink: IO[bytes], *, max_bytes: int) -> int:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:  # botocore's errors carry the reason in words
        raise SourceError("source_unreachable", f"Cannot read {uri}: {exc}.") from None
    return _copy(body.iter_chunks(CHUNK), sink, max_bytes, uri)


def _copy(chunks: Any, sink: IO[bytes], max_bytes: int, where: str) -> int:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise SourceError(
                "source_too_large",
                f"{where} is larger than {max_bytes >> 20} MB, the limit for a dataset file.",
            )
        sink.write(chunk)
    return size
