"""The consumer wrapper's ack policy and the dead-letter recorder, on a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import asyncpg
import orjson
import pytest
import structlog

from common.bus import Bus
from common.consumer import Consumer, Delivery, Permanent, Retryable
from common.messages import EVENTS, MediaIngested
from common.topology import ORIGIN_ROUTING_KEY_HEADER
from tests.conftest import make_jpeg, media_event
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form


@asynccontextmanager
async def consuming(gateway: Gateway, handler: Any, **options: Any) -> AsyncIterator[None]:
    bus = Bus(gateway.deps.settings)
    await bus.start(wait=10)
    consumer = Consumer(
        bus, gateway.specs[0], {MediaIngested: handler}, service="test", prefetch=5, **options
    )
    await consumer.start()
    try:
        yield
    finally:
        await bus.close()


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def ingest_one(gateway: Gateway, seed: int) -> dict[str, Any]:
    response = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(seed))))
    assert response.status == 202
    body: dict[str, Any] = await response.json()
    return body


async def test_consumer_parks_and_records_failure_when_retries_are_exhausted(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    attempts: list[int] = []

    async def always_failing(event: MediaIngested, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise Retryable("model server unavailable")

    async with consuming(gateway, always_failing):
        job = await ingest_one(gateway, 1)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters"))
    row = await db.fetchrow("SELECT * FROM dead_letters")
    assert attempts == [1, 2, 3]  # two retry tiers, then parked
    assert row["queue"] == gateway.specs[0].name
    assert row["attempts"] == 3
    assert "gave up after 3 attempts" in row["error"]
    assert "model server unavailable" in row["error"]
    assert str(row["job_id"]) == job["job_id"]
    assert row["routing_key"] == "media.ingested.v1"
    assert orjson.loads(row["body"])["job_id"] == job["job_id"]
    content = await db.fetchrow("SELECT stage, error FROM content WHERE id = $1", row["content_id"])
    assert content["stage"] == "failed"
    assert "model server unavailable" in content["error"]
    status = await (await gateway.client.get(f"/api/v1/ingest/{job['job_id']}/status")).json()
    assert status["status"] == "failed"
    assert "model server unavailable" in status["uploads"][0]["error"]


async def test_dead_letter_error_never_names_the_storage_root_when_a_handler_leaks_a_path(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    root = str(gateway.deps.settings.storage_path.resolve())

    async def leaky(event: MediaIngested, delivery: Delivery) -> None:
        raise Permanent(f"[Errno 2] No such file or directory: '{root}/objects/ab/cd/x'")

    async with consuming(gateway, leaky):
        job = await ingest_one(gateway, 7)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters"))
    error = await db.fetchval("SELECT error FROM dead_letters")
    assert root not in error and "<storage>/objects/ab/cd/x" in error
    status = await (await gateway.client.get(f"/api/v1/ingest/{job['job_id']}/status")).json()
    assert root not in str(status)


async def test_consumer_parks_at_once_when_error_is_permanent(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    calls = 0

    async def corrupt(event: MediaIngested, delivery: Delivery) -> None:
        nonlocal calls
        calls += 1
        raise Permanent("image is truncated")

    async with consuming(gateway, corrupt):
        await ingest_one(gateway, 2)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters"))
        await asyncio.sleep(0.3)
    assert calls == 1
    assert await db.fetchval("SELECT error FROM dead_letters") == "Permanent: image is truncated"
    assert await db.fetchval("SELECT stage FROM content") == "failed"


async def test_consumer_parks_without_retry_when_message_is_invalid(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    calls = 0

    async def handler(event: MediaIngested, delivery: Delivery) -> None:
        nonlocal calls
        calls += 1

    async with consuming(gateway, handler):
        bus = gateway.deps.bus
        await bus.publish("media.ingested.v1", b'{"not": "an event"}', message_id="bad-1")
        await bus.publish("media.ingested.v1", b"\xff\x00 not json", message_id="bad-2")
        await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM dead_letters"))
    assert calls == 0
    errors = await db.fetch("SELECT message_id, error, content_id FROM dead_letters ORDER BY 1")
    assert [r["message_id"] for r in errors] == ["bad-1", "bad-2"]
    assert all(r["error"].startswith("invalid message") for r in errors)
    assert all(r["content_id"] is None for r in errors)


async def test_consumer_acks_after_retry_when_failure_is_transient(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    seen: list[int] = []
    done = asyncio.Event()

    async def flaky(event: MediaIngested, delivery: Delivery) -> None:
        seen.append(delivery.attempt)
        if delivery.attempt == 1:
            raise ConnectionError("database restarting")
        assert delivery.routing_key == "media.ingested.v1"
        done.set()

    async with consuming(gateway, flaky):
        await ingest_one(gateway, 3)
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.3)
    assert seen == [1, 2]
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    stats = await gateway.deps.bus.queue_stats(gateway.specs[0].name)
    assert stats is not None and stats[0] == 0


async def test_consumer_ignores_unknown_fields_when_version_is_the_same(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    got: list[MediaIngested] = []

    async def handler(event: MediaIngested, delivery: Delivery) -> None:
        got.append(event)

    event = media_event()
    body = orjson.dumps({**orjson.loads(event.to_bytes()), "added_in_a_later_release": True})
    async with consuming(gateway, handler):
        await gateway.deps.bus.publish("media.ingested.v1", body, message_id="m-1")
        await wait_for(lambda: asyncio.sleep(0, len(got) == 1))
    assert got[0].content_id == event.content_id
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_consumer_retries_then_parks_with_traceback_when_handler_exceeds_time_limit(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    attempts: list[int] = []

    async def stuck(event: MediaIngested, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        await asyncio.sleep(60)  # a hung decode, a lost socket: never finishes by itself

    async with consuming(gateway, stuck, timeout_s=0.3):
        job = await ingest_one(gateway, 11)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters"), 15)
    assert attempts == [1, 2, 3]  # the time limit is a failure like any other: retried
    response = await gateway.client.get(f"/api/v1/admin/dlq/{job['job_id']}")
    assert response.status == 200
    [letter] = await response.json()
    assert letter["error"] == "gave up after 3 attempts: handler timed out after 0.3 s"
    assert "Traceback (most recent call last)" in letter["traceback"]
    assert "in stuck" in letter["traceback"]  # the frame where the handler hung
    assert "CancelledError" in letter["traceback"]


async def test_consumer_keeps_the_traceback_when_a_handler_fails_unexpectedly(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    root = str(gateway.deps.settings.storage_path.resolve())

    def parse(path: str) -> None:
        raise KeyError(f"{path}: no 'width'")

    async def buggy(event: MediaIngested, delivery: Delivery) -> None:
        parse(f"{root}/objects/x")

    async with consuming(gateway, buggy):
        await ingest_one(gateway, 12)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters"), 15)
    row = await db.fetchrow("SELECT error, traceback, headers FROM dead_letters")
    assert row["error"].startswith("gave up after 3 attempts: KeyError")
    assert "in parse" in row["traceback"] and "in buggy" in row["traceback"]
    assert root not in row["traceback"]  # scrubbed like the error
    assert len(row["traceback"]) <= 8000
    assert "x-traceback" not in row["headers"]  # kept once, in its own column


async def test_consumer_parks_without_traceback_when_failure_is_expected(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    async def not_yet(event: MediaIngested, delivery: Delivery) -> None:
        raise Retryable("cluster not filed yet")

    async with consuming(gateway, not_yet):
        await ingest_one(gateway, 13)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters"), 15)
    row = await db.fetchrow("SELECT error, traceback FROM dead_letters")
    assert row["error"] == "gave up after 3 attempts: Retryable: cluster not filed yet"
    assert row["traceback"] is None


async def test_consumer_binds_the_event_ids_into_the_log_context_when_handling(
    gateway: Gateway,
) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(event: MediaIngested, delivery: Delivery) -> None:
        seen.append(structlog.contextvars.get_contextvars())

    async with consuming(gateway, handler):
        job = await ingest_one(gateway, 14)
        await wait_for(lambda: asyncio.sleep(0, len(seen) == 1))
    [context] = seen
    assert context["job_id"] == job["job_id"]
    assert context["content_id"] and context["queue"] == gateway.specs[0].name
    assert "job_id" not in structlog.contextvars.get_contextvars()  # unbound afterwards


class MediaIngestedV2(MediaIngested):
    """A later version of media.ingested, as a rolling deploy would bring."""

    routing_key: ClassVar[str] = "media.ingested.v2"
    priority: int


async def test_consumer_decodes_each_version_by_routing_key_when_two_share_a_queue(
    gateway: Gateway,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(EVENTS, MediaIngestedV2.routing_key, MediaIngestedV2)
    got: list[tuple[str, Any]] = []

    async def v1(event: MediaIngested, delivery: Delivery) -> None:
        got.append(("v1", event))

    async def v2(event: MediaIngestedV2, delivery: Delivery) -> None:
        got.append(("v2", event))

    bus = Bus(gateway.deps.settings)
    await bus.start(wait=10)
    spec = gateway.specs[0]
    channel = await bus.channel(prefetch=1)
    queue = await channel.get_queue(spec.name)
    await queue.bind(gateway.deps.settings.bus_exchange, MediaIngestedV2.routing_key)
    consumer = Consumer(
        bus, spec, {MediaIngested: v1, MediaIngestedV2: v2}, service="test", prefetch=5
    )
    await consumer.start()
    try:
        old, new = media_event(), MediaIngestedV2(**media_event().model_dump(), priority=3)
        await bus.publish(old.routing_key, old.to_bytes(), message_id="old")
        await bus.publish(new.routing_key, new.to_bytes(), message_id="new")
        # A key the consumer has no handler for (a copy sent back to the queue by a newer
        # release, say) is parked at once, not guessed at.
        await bus.publish(
            spec.name,
            new.to_bytes(),
            message_id="newer",
            headers={ORIGIN_ROUTING_KEY_HEADER: "media.ingested.v3"},
            to_queue=True,
        )
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters"))
        await wait_for(lambda: asyncio.sleep(0, len(got) == 2))
    finally:
        await consumer.stop()
        await queue.unbind(gateway.deps.settings.bus_exchange, MediaIngestedV2.routing_key)
        await bus.close()
    versions = dict(got)
    assert type(versions["v1"]) is MediaIngested
    assert isinstance(versions["v2"], MediaIngestedV2) and versions["v2"].priority == 3
    row = await db.fetchrow("SELECT message_id, error FROM dead_letters")
    assert row["message_id"] == "newer"
    assert "no handler here for routing key 'media.ingested.v3'" in row["error"]


async def test_consumer_takes_no_more_messages_when_stopped(gateway: Gateway) -> None:
    got: list[MediaIngested] = []

    async def handler(event: MediaIngested, delivery: Delivery) -> None:
        got.append(event)

    bus = Bus(gateway.deps.settings)
    await bus.start(wait=10)
    consumer = Consumer(bus, gateway.specs[0], {MediaIngested: handler}, service="t", prefetch=5)
    await consumer.start()
    try:
        await ingest_one(gateway, 15)
        await wait_for(lambda: asyncio.sleep(0, len(got) == 1))
        await consumer.stop()
        await ingest_one(gateway, 16)

        async def waiting() -> bool:
            stats = await bus.queue_stats(gateway.specs[0].name)
            return stats is not None and stats[0] == 1  # waiting for the next consumer

        await wait_for(waiting)
        await asyncio.sleep(0.3)
        assert len(got) == 1
    finally:
        await bus.close()
