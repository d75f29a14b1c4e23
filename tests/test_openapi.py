"""The OpenAPI description is kept in step with the routes, and it is valid OpenAPI."""

from __future__ import annotations

import schemathesis
from starlette.routing import Route

from tunelab.functions.app import ROUTES
from tunelab.functions.openapi import OPERATIONS, openapi


def test_every_route_is_described_and_every_description_is_a_route() -> None:
    routed = {
        (method, route.path)
        for route in ROUTES
        if isinstance(route, Route) and not route.path.startswith(("/console", "/openapi"))
        for method in (route.methods or set()) - {"HEAD"}
    } - {("GET", "/")}
    assert routed == set(OPERATIONS), {
        "undescribed": sorted(routed - set(OPERATIONS)),
        "not routed": sorted(set(OPERATIONS) - routed),
    }


def test_the_description_is_valid_openapi_with_every_body_model() -> None:
    document = openapi()
    schema = schemathesis.openapi.from_dict(document)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) == len(OPERATIONS)
    bodies = {name for name, op in OPERATIONS.items() if op.body is not None}
    for method, path in bodies:
        body = document["paths"][path][method.lower()]["requestBody"]["content"]
        reference = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert reference in document["components"]["schemas"]
