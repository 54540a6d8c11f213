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


from tests.integration.conftest import gateway, start_gateway  # noqa: E402, F401
