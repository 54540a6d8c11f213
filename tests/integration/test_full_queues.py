"""Full queues and refused publishes: the relay and the workers wait, resume, lose nothing.

Queues here get a small length limit (BUS_QUEUE_MAX_LENGTH) so that they really fill, on a
real broker: RabbitMQ refuses publishes to a full quorum queue (reject-publish) with a nack.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from common.bus import Bus, PublishRefused
from common.consumer import Consumer, Delivery
from common.db import open_pool
from common.messages import JsonIngested, MediaEmbedded, MediaIngested
from common.outbox import OutboxRelay, add_events
from common.topology import declare_queue, migrate_legacy_delay_queues, spec_of
from tests.conftest import BusNames, fill_queue, media_event, read_queue


def json_event() -> JsonIngested:
    return JsonIngested(job_id=uuid.uuid4(), upload_ids=[uuid.uuid4()])


async def write_outbox(database_url: str, events: list[Any]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await add_events(conn, events)
    finally:
        await conn.close()


async def eventually(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def running_relay(relay: OutboxRelay) -> AsyncIterator[None]:
    task = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_relay_keeps_other_destinations_flowing_when_a_queue_is_full_then_resumes(
    settings_factory: Callable[..., Any],
    bus_names: BusNames,
    database_url: str,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    settings = settings_factory(bus_queue_max_length=5)
    json_queue = bus_names.specs[1].name
    documents = [json_event() for _ in range(20)]
    images = [media_event() for _ in range(3)]
    await write_outbox(database_url, documents)  # first in line: they block the head
    await write_outbox(database_url, images)
    async with open_pool(settings) as pool:
        bus = Bus(settings)
        await bus.start(wait=10)
        relay = OutboxRelay(pool, bus, batch_size=10, poll_interval=0.1, max_backoff=0.5)
        refused_before = metric(
            "bus_publish_refused_total", destination=JsonIngested.routing_key, reason="full"
        )
        try:
            with capture_logs() as logs:
                async with running_relay(relay):
                    # Images get through although every batch starts with refused documents.
                    await eventually(
                        lambda: db.fetchval(
                            "SELECT count(*) = 3 FROM outbox"
                            " WHERE routing_key = $1 AND sent_at IS NOT NULL",
                            MediaIngested.routing_key,
                        )
                    )
                    assert JsonIngested.routing_key in relay.stalls
                    assert relay.report()[JsonIngested.routing_key]["reason"] == "full"
                    assert (
                        metric("outbox_destination_stalled", destination=JsonIngested.routing_key)
                        == 1
                    )
                    assert (
                        metric(
                            "bus_publish_refused_total",
                            destination=JsonIngested.routing_key,
                            reason="full",
                        )
                        > refused_before
                    )
                    # Free the queue by taking what it holds; the relay resumes by itself.
                    taken: list[str] = []
                    channel = await amqp.channel()
                    queue = await channel.get_queue(json_queue)
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 20
                    while len(taken) < len(documents) and loop.time() < deadline:
                        message = await queue.get(no_ack=True, fail=False)
                        if message is None:
                            await asyncio.sleep(0.05)
                            continue
                        taken.append(orjson.loads(message.body)["message_id"])
                    await channel.close()
                    await eventually(
                        lambda: db.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL")
                    )
                    await eventually(lambda: asyncio.sleep(0, not relay.stalls), timeout=5)
        finally:
            await bus.close()
    assert set(taken) == {str(d.message_id) for d in documents}  # every one, none lost
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL") == 0
    events = [entry["event"] for entry in logs]
    assert "outbox publishes refused; backing off from this destination" in events
    assert "outbox destination resumed" in events
    assert metric("outbox_destination_stalled", destination=JsonIngested.routing_key) == 0
    media = await read_queue(amqp, bus_names.specs[0].name, expect=3)
    assert len(media) == 3


async def test_relay_parks_a_row_that_can_never_be_routed_where_the_dlq_api_shows_it(
    settings_factory: Callable[..., Any],
    bus_names: BusNames,
    database_url: str,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    settings = settings_factory()
    await db.execute(
        "INSERT INTO outbox (message_id, routing_key, body) VALUES ($1, 'nobody.listens', $2)",
        uuid.uuid4(),
        b'{"content_id": "00000000-0000-0000-0000-000000000001"}',
    )
    await write_outbox(database_url, [media_event()])
    async with open_pool(settings) as pool:
        bus = Bus(settings)
        await bus.start(wait=10)
        relay = OutboxRelay(
            pool, bus, poll_interval=0.05, max_backoff=0.05, park_unroutable_after=0
        )
        try:
            async with running_relay(relay):
                await eventually(
                    lambda: db.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL")
                )
        finally:
            await bus.close()
    parked = await db.fetchrow("SELECT * FROM outbox WHERE parked_at IS NOT NULL")
    assert parked["routing_key"] == "nobody.listens" and parked["attempts"] >= 3
    letter = await db.fetchrow("SELECT * FROM dead_letters")
    assert letter["queue"] == "outbox"
    assert letter["routing_key"] == "nobody.listens"
    assert "unroutable" in letter["error"]
    assert str(letter["content_id"]) == "00000000-0000-0000-0000-000000000001"
    assert len(await read_queue(amqp, bus_names.specs[0].name, expect=1)) == 1


DLX_TIMEOUT = "dead_letter_worker_publisher_confirm_timeout"


def _rabbitmq_eval(expression: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "eval", expression], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def fast_dead_letter_retries() -> Any:
    """The broker's at-least-once dead-letter worker retries a refused message after 180 s
    by default; shorten that for the test and put the old value back afterwards (never unset
    it: the worker has no default of its own and would crash without it)."""
    before = _rabbitmq_eval(f"application:get_env(rabbit, {DLX_TIMEOUT}).")
    previous = before[4:-1] if before.startswith("{ok,") else "180000"
    _rabbitmq_eval(f"application:set_env(rabbit, {DLX_TIMEOUT}, 500).")
    try:
        yield
    finally:
        _rabbitmq_eval(f"application:set_env(rabbit, {DLX_TIMEOUT}, {previous}).")


async def test_retry_waits_in_its_delay_queue_when_the_origin_queue_is_full(
    settings_factory: Callable[..., Any],
    bus_names: BusNames,
    amqp: aio_pika.abc.AbstractRobustConnection,
    fast_dead_letter_retries: None,
) -> None:
    settings = settings_factory(bus_queue_max_length=1, bus_retry_delays=(0.05,))
    spec = bus_names.specs[0]
    channel = await amqp.channel(publisher_confirms=True)
    await declare_queue(channel, settings, spec)
    fillers = await fill_queue(amqp, spec.name)
    await channel.default_exchange.publish(
        aio_pika.Message(b"the retry"), routing_key=spec.delay(1)
    )
    await asyncio.sleep(1.0)  # its TTL expired long ago, into a full queue
    bodies = [m.body for m in await read_queue(amqp, spec.name, expect=fillers + 1, timeout=10)]
    assert b"the retry" in bodies, "a retry that met a full queue was dropped"
    await channel.close()


async def test_legacy_classic_delay_queues_are_drained_into_their_origin_and_removed(
    settings_factory: Callable[..., Any],
    bus_names: BusNames,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    settings = settings_factory()
    spec = bus_names.specs[0]
    channel = await amqp.channel(publisher_confirms=True)
    await declare_queue(channel, settings, spec)
    legacy = spec.legacy_delay(1)
    # As earlier releases declared it: classic, with a TTL that dead-letters to the origin.
    await channel.declare_queue(
        legacy,
        durable=True,
        arguments={
            "x-message-ttl": 3_600_000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": spec.name,
        },
    )
    for n in range(3):
        await channel.default_exchange.publish(
            aio_pika.Message(f"retry {n}".encode(), headers={"x-attempt": 2}), routing_key=legacy
        )
    await channel.close()

    assert await migrate_legacy_delay_queues(amqp, bus_names.specs) == 3
    assert await migrate_legacy_delay_queues(amqp, bus_names.specs) == 0  # idempotent
    moved = await read_queue(amqp, spec.name, expect=3)
    assert sorted(m.body for m in moved) == [b"retry 0", b"retry 1", b"retry 2"]
    assert all(m.headers["x-attempt"] == 2 for m in moved)
    check = await amqp.channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await check.declare_queue(legacy, passive=True)


async def test_worker_whose_outgoing_publish_is_refused_puts_the_message_back_and_pauses(
    settings_factory: Callable[..., Any],
    bus_names: BusNames,
    database_url: str,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """One event fans out to two queues; one is full. The effect happens once, the message
    is neither parked nor charged an attempt, and it goes through once the queue frees."""
    settings = settings_factory(bus_queue_max_length=2)
    ingested = spec_of(bus_names.specs, "embedder")
    embedded_clusterer = spec_of(bus_names.specs, "clusterer", MediaEmbedded.routing_key)
    embedded_analyzer = spec_of(bus_names.specs, "analyzer")
    await db.execute("CREATE TABLE effects (content_id uuid PRIMARY KEY, times int NOT NULL)")
    attempts: list[int] = []
    bus = Bus(settings)
    await bus.start(wait=10)

    async def handler(event: MediaIngested, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        # The effect, idempotent as every handler's is: done once, whatever the redeliveries.
        await bus_pool.execute(
            "INSERT INTO effects VALUES ($1, 1) ON CONFLICT (content_id) DO NOTHING",
            event.content_id,
        )
        out = MediaEmbedded(
            content_id=event.content_id, job_id=event.job_id, kind="image", model_id="m"
        )
        await bus.publish(out.routing_key, out.to_bytes(), message_id=str(out.message_id))

    async with open_pool(settings) as bus_pool:
        consumer = Consumer(
            bus, ingested, {MediaIngested: handler}, service="test", prefetch=1, pause_base=0.2
        )
        try:
            # Fill the analyzer's queue; the clusterer's stays free (it is drained below).
            await fill_queue(amqp, embedded_analyzer.name)
            channel = await amqp.channel(publisher_confirms=True)
            # The clusterer's queue takes every copy (its consumer is stood in for here).
            copies: list[bytes] = []

            async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                copies.append(message.body)

            collector = await amqp.channel()
            await (await collector.get_queue(embedded_clusterer.name)).consume(collect, no_ack=True)
            event = media_event()
            await channel.default_exchange.publish(
                aio_pika.Message(event.to_bytes(), message_id=str(event.message_id)),
                routing_key=ingested.name,
            )
            await consumer.start()
            await eventually(lambda: asyncio.sleep(0, consumer.paused))
            assert bus.refusal_report()[MediaEmbedded.routing_key]["reason"] == "full"
            assert metric("consumer_paused", service="test", queue=ingested.name) == 1
            await eventually(lambda: asyncio.sleep(0, len(attempts) >= 2), timeout=10)
            # Free the analyzer's queue: the next delivery goes through.
            await (await channel.get_queue(embedded_analyzer.name)).purge()
            delivered = await read_queue(amqp, embedded_analyzer.name, expect=1, timeout=15)
            await channel.close()
        finally:
            await bus.close()
    assert set(attempts) == {1}  # never charged an attempt
    assert await db.fetchval("SELECT times FROM effects") == 1
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert [orjson.loads(m.body)["content_id"] for m in delivered] == [str(event.content_id)]
    # The queue that took the refused publish got it again on every try: its consumer must
    # be (and is, see tests/clusterer) idempotent.
    await collector.close()
    assert len(copies) == len(attempts) >= 2
    assert {orjson.loads(body)["content_id"] for body in copies} == {str(event.content_id)}


async def test_bus_publish_raises_publish_refused_when_the_queue_is_full(
    settings_factory: Callable[..., Any], bus_names: BusNames
) -> None:
    settings = settings_factory(bus_queue_max_length=1)
    bus = Bus(settings)
    await bus.start(wait=10)
    try:
        with pytest.raises(PublishRefused) as refused:
            for _ in range(5):
                event = json_event()
                await bus.publish(event.routing_key, event.to_bytes(), message_id="x")
        assert refused.value.reason == "full"
        assert bus.refusal_report()[JsonIngested.routing_key]["refused"] == 1
    finally:
        await bus.close()
