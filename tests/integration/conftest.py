"""The gateway, served over real HTTP on loopback, with its real resources."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.http import AppRunner
from common.topology import QueueSpec
from gateway.app import build_app
from gateway.deps import DEPS, Deps
from tests.conftest import BusNames


@dataclass
class Gateway:
    client: TestClient[web.Request, web.Application]
    deps: Deps
    specs: tuple[QueueSpec, ...]

    @property
    def media_queue(self) -> str:
        return self.specs[0].name

    @property
    def json_queue(self) -> str:
        return self.specs[1].name


class GatewayServer(TestServer):
    """A test server with the gateway's own runner (malformed requests answered as JSON)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return AppRunner(self.app, **kwargs)


@pytest.fixture
def start_gateway(settings_factory: Callable[..., Any], bus_names: BusNames) -> Callable[..., Any]:
    """Start a gateway with settings overrides; it stops when the block ends."""
    specs = bus_names.specs

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Gateway]:
        settings = settings_factory(**overrides)
        client = TestClient(GatewayServer(build_app(settings)))
        await client.start_server()
        try:
            deps = client.app[DEPS]
            await deps.bus.wait_connected(10)
            yield Gateway(client, deps, specs)
        finally:
            await client.close()

    return start


@pytest.fixture
async def gateway(start_gateway: Callable[..., Any]) -> AsyncIterator[Gateway]:
    async with start_gateway() as gw:
        yield gw
