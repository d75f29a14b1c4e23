"""Fuzzing the whole HTTP API (schemathesis, from the app's own OpenAPI description)
against the real platform on PostgreSQL, Redis and an S3 server: no input may get a 5xx,
and every answer must match the description (errors in the contract's shape included).

Bounded: a few dozen generated requests per operation (TUNELAB_FUZZ_EXAMPLES), so the
whole run takes a couple of minutes; raise it by hand for a longer hunt.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.platform_fixture import Platform
from tunelab.functions.openapi import openapi

EXAMPLES = int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "60"))


@schemathesis.serializer("application/jsonl")
def jsonl(context: object, value: object) -> bytes:
    """A generated batch body: each generated value one line."""
    lines = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


schema = schemathesis.openapi.from_dict(openapi()).exclude(
    # A live stream never ends by itself: it would hold a case until its timeout.
    path="/api/v1/events/stream"
)


@pytest.fixture(scope="module")
def api(platform: Platform) -> Platform:
    return platform


@pytest.mark.timeout(900)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_request_gets_a_server_error_or_breaks_the_description(
    case: schemathesis.Case, api: Platform
) -> None:
    case.call_and_validate(
        base_url=api.url,
        headers={"authorization": f"Bearer {api.token}"},
        timeout=30,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )
