"""Outgoing requests to addresses a user gave (remote datasets, webhooks, SNS
confirmations): http(s) only, and, unless the operator allows private networks, only to
public addresses, checked on the very connection that is made.

A check that resolves a name and a client that resolves it again leave a window: a name
that answers with a public address first and a private one second (DNS rebinding) gets
through. Here the client's own connect resolves once, checks every address, and connects
to one that was checked; the request keeps the original host for its Host header and TLS
server name. Every redirect hop connects anew, so it is checked anew.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from httpcore._backends.sync import SyncBackend

Resolver = Callable[..., list[tuple[Any, ...]]]


class AddressRefused(ValueError):
    """The URL may not be reached (scheme, or a private address); the message says why."""

    def __init__(self, message: str, code: str = "address_refused") -> None:
        super().__init__(message)
        self.code = code


def check_scheme(url: str) -> str:
    """The URL's host; AddressRefused unless it is an http(s) URL with one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused(f"Only http and https addresses can be reached, not {url[:200]!r}.")
    return parts.hostname


def public_addresses(
    host: str, port: int, allow_private: bool, resolve: Resolver = socket.getaddrinfo
) -> list[str]:
    """The addresses of `host`, resolved once; AddressRefused when any is not public
    (unless private ones are allowed) or when it does not resolve."""
    try:
        infos = resolve(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise AddressRefused(f"Cannot resolve {host!r}: {exc}.", "address_unresolved") from None
    found = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for text in found:
            if not ipaddress.ip_address(text).is_global:
                raise AddressRefused(
                    f"{host} resolves to a private or loopback address ({text}); the "
                    "operator has not allowed such addresses."
                )
    return found


def check_address(url: str, allow_private: bool) -> None:
    """A URL given now (a webhook being registered): the scheme, and where it resolves."""
    host = check_scheme(url)
    if not allow_private:
        public_addresses(host, urlsplit(url).port or 443, allow_private)


class _PinnedBackend(httpcore.NetworkBackend):
    def __init__(self, allow_private: bool, resolve: Resolver) -> None:
        self.allow_private, self.resolve = allow_private, resolve
        self.inner = SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        failure: Exception | None = None
        for address in public_addresses(host, port, self.allow_private, self.resolve):
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"no address of {host}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise AddressRefused("Unix sockets cannot be reached.")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport, connecting only to the addresses it checked itself."""

    def __init__(self, allow_private: bool, resolve: Resolver = socket.getaddrinfo) -> None:
        super().__init__()
        pool = self._pool
        assert isinstance(pool, httpcore.ConnectionPool)
        self._pool = httpcore.ConnectionPool(
            ssl_context=pool._ssl_context,
            network_backend=_PinnedBackend(allow_private, resolve),
        )


def pinned_client(
    allow_private: bool, timeout: float, resolve: Resolver = socket.getaddrinfo
) -> httpx.Client:
    """A client for user-given addresses; redirects are the caller's to follow (each is
    a new address: check its scheme with check_scheme)."""
    return httpx.Client(
        transport=PinnedTransport(allow_private, resolve), timeout=timeout, follow_redirects=False
    )
