"""A schemer per test (in-process, its real resources), beside the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from schemer.app import running
from schemer.deps import SchemerDeps
from schemer.settings import SchemerSettings


@pytest.fixture
def schemer_settings(common_settings: dict[str, Any]) -> Callable[..., SchemerSettings]:
    def make(**overrides: Any) -> SchemerSettings:
        values: dict[str, Any] = {**common_settings, "worker_http_port": 0}
        values.update(overrides)
        return SchemerSettings(**values)

    return make


@pytest.fixture
def start_schemer(
    schemer_settings: Callable[..., SchemerSettings],
) -> Callable[..., AbstractAsyncContextManager[SchemerDeps]]:
    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[SchemerDeps]:
        async with running(schemer_settings(**overrides)) as deps:
            await deps.bus.wait_connected(10)
            yield deps

    return start


@pytest.fixture
async def schemer(
    start_schemer: Callable[..., AbstractAsyncContextManager[SchemerDeps]],
) -> AsyncIterator[SchemerDeps]:
    """A schemer with the test's settings, for tests that need one running throughout."""
    async with start_schemer() as deps:
        yield deps


async def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll an async check until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


async def ingest(gw: Any, documents: Any, expect: int = 202, **params: str) -> dict[str, Any]:
    """POST JSON to the gateway (query parameters as given); the answer's body."""
    response = await gw.client.post("/api/v1/ingest", json=documents, params=params)
    assert response.status == expect, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def job_status(gw: Any, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = await (await gw.client.get(f"/api/v1/ingest/{job_id}/status")).json()
    return body


async def wait_job(gw: Any, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The job's status once done (or failed: the assertion says which)."""

    async def finished() -> Any:
        body = await job_status(gw, job_id)
        return body if body["status"] in ("done", "failed", "partial") else None

    body: dict[str, Any] = await wait_for(finished, timeout, f"job {job_id}")
    return body


async def schema_of(gw: Any, collection_id: str) -> dict[str, Any]:
    response = await gw.client.get(f"/api/v1/schemas/{collection_id}")
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def decide(gw: Any, collection_id: str, action: str, timeout: float = 60.0) -> dict[str, Any]:
    """Approve or reject a collection and wait until the schemer has carried it out."""
    response = await gw.client.post(f"/api/v1/schemas/{collection_id}/{action}")
    assert response.status == 202, await response.text()
    final = {"approve": "approved", "reject": "rejected"}[action]

    async def done() -> Any:
        body = await schema_of(gw, collection_id)
        return body if body["status"] == final else None

    body: dict[str, Any] = await wait_for(done, timeout, f"{action} of {collection_id}")
    return body


async def read_documents(gw: Any, name: str, **params: Any) -> list[dict[str, Any]]:
    """Every document of a collection, page by page."""
    found: list[dict[str, Any]] = []
    after: Any = None
    while True:
        query = {"limit": "500", **params} | ({"after": str(after)} if after is not None else {})
        response = await gw.client.get(f"/api/v1/collections/{name}/documents", params=query)
        assert response.status == 200, await response.text()
        page = await response.json()
        found.extend(page["documents"])
        after = page["next_after"]
        if after is None:
            return found


from tests.integration.conftest import gateway, start_gateway  # noqa: E402, F401
