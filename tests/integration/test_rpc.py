"""Request/reply over the real broker: answered calls publish their answer cleanly, and a
caller that gave up costs the server nothing but a dropped answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from common.bus import Bus
from common.rpc import RpcClient, RpcServer, RpcTimeout


@pytest.fixture
async def bus(settings_factory: Callable[..., Any]) -> AsyncIterator[Bus]:
    connected = Bus(settings_factory())
    await connected.start(wait=5.0)
    yield connected
    await connected.close()


async def test_answers_reach_their_caller_and_a_late_one_is_dropped_quietly(bus: Bus) -> None:
    queue = f"test-rpc-{uuid.uuid4().hex[:8]}"
    slow = asyncio.Event()

    async def answer(body: bytes) -> bytes:
        if body == b"slow":
            await asyncio.sleep(0.5)
            slow.set()
        return body.upper()

    server = RpcServer(bus, queue, answer, prefetch=4)
    await server.start()
    client = RpcClient(bus, queue, timeout=2.0)
    try:
        with capture_logs() as logs:
            assert await client.call(b"hello") == b"HELLO"
            assert await asyncio.gather(*(client.call(b"x%d" % i) for i in range(5))) == [
                b"X%d" % i for i in range(5)
            ]
            with pytest.raises(RpcTimeout):
                await client.call(b"slow", timeout=0.1)
            await asyncio.wait_for(slow.wait(), 5)
            await asyncio.sleep(0.2)  # its answer went to nobody
            assert await client.call(b"again") == b"AGAIN"
        # RabbitMQ returns a mandatory answer to a direct reply-to as unroutable even when it
        # delivers it: no answer may be logged as lost.
        assert [e for e in logs if e.get("queue") == queue] == []
    finally:
        await server.stop()
