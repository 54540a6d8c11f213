"""The OpenAPI document: served, true to every route, and no input makes the gateway fail
(schemathesis generates valid and invalid requests from it and sends them over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.core.result import Err

from gateway.openapi import document
from tests.integration.conftest import Gateway

ADMIN = "schemathesis-admin-key-01"


async def test_openapi_document_is_served_and_lists_exactly_the_routes(gateway: Gateway) -> None:
    response = await gateway.client.get("/api/v1/openapi.json")
    assert response.status == 200
    served = await response.json()
    assert served["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(served)  # loads (and so parses) as OpenAPI
    documented = {
        (path, method.upper())
        for path, operations in served["paths"].items()
        for method in operations
    }
    routed = {
        (route.resource.canonical, route.method)
        for route in gateway.client.app.router.routes()
        if route.method not in ("HEAD", "OPTIONS") and route.resource is not None
    }
    assert routed == documented


def fuzz(base_url: str, examples: int) -> list[str]:
    """Every operation, valid and invalid requests; what answered 500 (or did not answer)."""
    schema = schemathesis.openapi.from_dict(document())
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                response = case.call(
                    base_url=base_url,
                    headers={"X-API-Key": ADMIN, **(case.headers or {})},
                    timeout=30,
                )
                if response.status_code >= 500 and response.status_code not in (503, 504):
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                    )

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong (no inputs)
    return failures


async def test_no_generated_request_makes_the_gateway_fail(
    start_gateway: Callable[..., Any],
) -> None:
    # Keys on, so that authorisation is exercised too; a short embed timeout stands in for an
    # absent embedder (503, which is an answer, not a failure).
    async with start_gateway(
        admin_api_key=ADMIN, search_embed_timeout_s=0.05, cluster_command_timeout_s=0.05
    ) as gateway:
        base_url = str(gateway.client.make_url("/")).rstrip("/")
        failures = await asyncio.to_thread(fuzz, base_url, 25)
    assert failures == []
