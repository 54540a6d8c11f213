"""The outbox relay: at least once after a crash, never twice in normal operation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aio_pika
import asyncpg
import orjson

from common.bus import Bus
from common.db import open_pool
from common.messages import Event
from common.outbox import OutboxRelay, add_events
from tests.conftest import BusNames, media_event, read_queue


async def _fill_outbox(database_url: str, count: int) -> set[str]:
    events: list[Event] = [media_event() for _ in range(count)]
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await add_events(conn, events)
    finally:
        await conn.close()
    return {str(e.message_id) for e in events}


async def test_relay_publishes_every_event_when_killed_mid_run_and_restarted(
    settings_factory: Callable[..., Any],
    bus_names: BusNames,
    database_url: str,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    settings = settings_factory()
    # Declare the queues first, as every service does at start.
    bus = Bus(settings)
    await bus.start(wait=10)
    await bus.close()
    expected = await _fill_outbox(database_url, 3000)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BUS_EXCHANGE": bus_names.exchange,
        "BUS_QUEUE_PREFIX": bus_names.prefix,
        "BUS_RETRY_DELAYS": ",".join(str(d) for d in settings.bus_retry_delays),
        "LOG_LEVEL": "WARNING",
    }
    relay = subprocess.Popen([sys.executable, "-m", "gateway.relay"], env=env)
    # Kill it without warning once it has published part of the outbox.
    sent = 0
    for _ in range(1000):
        sent = await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")
        if sent > 0:
            break
        await asyncio.sleep(0.01)
    relay.send_signal(signal.SIGKILL)
    relay.wait()
    left = await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    assert sent > 0, "the relay never published"
    assert left > 0, "the relay finished before it could be killed; the test proves nothing"

    relay = subprocess.Popen([sys.executable, "-m", "gateway.relay"], env=env)
    try:
        for _ in range(600):
            if await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        relay.terminate()
        relay.wait()
    messages = await read_queue(amqp, bus_names.specs[0].name, expect=len(expected))
    seen = {orjson.loads(m.body)["message_id"] for m in messages}
    assert seen == expected  # at least once: nothing lost across the crash


async def test_two_relays_never_publish_a_row_twice_when_running_together(
    settings_factory: Callable[..., Any],
    bus_names: BusNames,
    database_url: str,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    settings = settings_factory()
    expected = await _fill_outbox(database_url, 1500)
    async with open_pool(settings) as pool:
        buses = [Bus(settings), Bus(settings)]
        for bus in buses:
            await bus.start(wait=10)
        relays = [OutboxRelay(pool, bus, batch_size=50) for bus in buses]

        async def drain(relay: OutboxRelay) -> int:
            total = 0
            while published := await relay.relay_once():
                total += published
            return total

        counts = await asyncio.gather(*(drain(r) for r in relays))
        for bus in buses:
            await bus.close()
    assert sum(counts) == len(expected)
    assert min(counts) > 0, "both relays should have taken part"
    messages = await read_queue(amqp, bus_names.specs[0].name, expect=len(expected))
    ids = [orjson.loads(m.body)["message_id"] for m in messages]
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected


async def test_relay_carries_trace_context_when_publishing(
    settings_factory: Callable[..., Any],
    bus_names: BusNames,
    database_url: str,
    amqp: aio_pika.abc.AbstractRobustConnection,
    db: asyncpg.Connection,
) -> None:
    settings = settings_factory()
    await _fill_outbox(database_url, 1)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    await db.execute(
        "UPDATE outbox SET headers = $1::jsonb",
        orjson.dumps({"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}).decode(),
    )
    async with open_pool(settings) as pool:
        bus = Bus(settings)
        await bus.start(wait=10)
        assert await OutboxRelay(pool, bus).relay_once() == 1
        await bus.close()
    [message] = await read_queue(amqp, bus_names.specs[0].name, expect=1)
    assert trace_id in str(message.headers["traceparent"])
