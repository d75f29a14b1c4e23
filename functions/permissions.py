"""The role each route needs, declared as data and enforced once, where the token is
checked (functions.middleware.BearerAuth): viewers read, members also change the
workspace's own resources, admins also manage tokens, webhooks, the audit log and base
models."""

from __future__ import annotations

from tunelab.api_requests import Role

READS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN_PREFIXES = ("/api/v1/tokens", "/api/v1/webhooks", "/api/v1/audit")
"""Every method on these needs an admin: they hand out access or show who did what."""
ADMIN_ROUTES = frozenset({("POST", "/api/v1/models")})
"""Registering a base model reads files the operator's roots allow: an admin's call."""


def required_role(method: str, path: str) -> Role:
    if path.startswith(ADMIN_PREFIXES) or (method, path.rstrip("/")) in ADMIN_ROUTES:
        return "admin"
    return "viewer" if method in READS else "member"
