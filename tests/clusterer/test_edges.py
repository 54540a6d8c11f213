"""Redelivery, crashes between steps, hostile messages and out-of-order events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import asyncpg

from clusterer.app import running
from clusterer.handlers import ClustererDeps, handle_embedded
from clusterer.repo import request_folder_syncs
from clusterer.settings import ClustererSettings
from common.consumer import Delivery
from common.messages import MediaAnalyzed, MediaClustered, MediaEmbedded, MediaUploaded
from common.storage.filesystem import FileSystemStorage
from common.topology import spec_of
from tests.clusterer.conftest import folder_snapshot, kinds, seed_embedded, wait_for
from tests.conftest import BusNames, read_queue

MODEL = "test/edges-16"
DELIVERY = Delivery(attempt=1, headers={}, routing_key=MediaEmbedded.routing_key)


async def clustered_queue(amqp: aio_pika.abc.AbstractRobustConnection, bus_names: BusNames) -> str:
    """A queue that collects media.clustered, so a test can count what was announced."""
    channel = await amqp.channel()
    exchange = await channel.declare_exchange(
        bus_names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    # Exclusive: it goes with the test's connection.
    queue = await channel.declare_queue(f"{bus_names.prefix}test.clustered", exclusive=True)
    await queue.bind(exchange, MediaClustered.routing_key)
    await channel.close()
    return queue.name


async def test_clusterer_files_once_and_relinks_when_redelivered_after_a_crash(
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
    bus_names: BusNames,
) -> None:
    announced = await clustered_queue(amqp, bus_names)
    vectors, labels = kinds(1, 2, dim=16, spread=0.2)
    first, second = await seed_embedded(db, clusterer.storage, MODEL, vectors, labels)
    event = MediaEmbedded(
        content_id=first.content_id, job_id=uuid.uuid4(), kind="image", model_id=MODEL
    )
    await asyncio.gather(*(handle_embedded(clusterer, event, DELIVERY) for _ in range(3)))
    cluster = await db.fetchrow("SELECT id, member_count FROM clusters")
    assert cluster["member_count"] == 1
    links = folder_snapshot(storage_path)
    assert len(links) == 2

    # A crash after the commit, before the links: redelivery makes them, and announces again.
    for path in links:
        (storage_path / path).unlink()
    await handle_embedded(clusterer, event, DELIVERY)
    assert folder_snapshot(storage_path) == links
    assert await db.fetchval("SELECT member_count FROM clusters") == 1
    messages = await read_queue(amqp, announced, expect=4)
    bodies = [MediaClustered.model_validate_json(m.body) for m in messages]
    assert len(bodies) == 4 and {b.cluster_id for b in bodies} == {cluster["id"]}
    assert sum(b.new_cluster for b in bodies) == 1

    # The second of the kind joins; the audit trail shows the create and the join.
    join = MediaEmbedded(
        content_id=second.content_id, job_id=uuid.uuid4(), kind="image", model_id=MODEL
    )
    await handle_embedded(clusterer, join, DELIVERY)
    assert await db.fetchval("SELECT member_count FROM clusters") == 2
    actions = [r["action"] for r in await db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["cluster.create", "cluster.join"]


async def test_clusterer_parks_hostile_messages_and_keeps_working_when_they_arrive(
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
    bus_names: BusNames,
) -> None:
    vectors, labels = kinds(1, 1, dim=16, spread=0.2)
    [good] = await seed_embedded(db, clusterer.storage, MODEL, vectors, labels)
    channel = await amqp.channel()
    exchange = await channel.get_exchange(bus_names.exchange)
    embedded_queue = spec_of(bus_names.specs, "clusterer", MediaEmbedded.routing_key)
    analyzed_queue = spec_of(bus_names.specs, "clusterer", MediaAnalyzed.routing_key)
    uploaded_queue = spec_of(bus_names.specs, "clusterer", MediaUploaded.routing_key)
    hostile = [
        (MediaEmbedded.routing_key, b"\xff\xfe not json at all"),
        (MediaEmbedded.routing_key, b"{}"),
        (MediaEmbedded.routing_key, b'{"content_id": "x", "job_id": 1}'),
        (MediaEmbedded.routing_key, b"[" * 100_000),
        (MediaEmbedded.routing_key, b'{"a": "' + b"x" * 5_000_000 + b'"}'),
        # valid shape, but nothing it names exists
        (
            MediaEmbedded.routing_key,
            MediaEmbedded(
                content_id=uuid.uuid4(), job_id=uuid.uuid4(), kind="image", model_id=MODEL
            ).to_bytes(),
        ),
        (
            MediaEmbedded.routing_key,
            MediaEmbedded(
                content_id=good.content_id,
                job_id=uuid.uuid4(),
                kind="image",
                model_id="no/such-model",
            ).to_bytes(),
        ),
        (MediaAnalyzed.routing_key, b'{"content_id": "' + str(good.content_id).encode() + b'"}'),
        (
            MediaAnalyzed.routing_key,
            MediaAnalyzed.model_construct(
                content_id=good.content_id,
                job_id=uuid.uuid4(),
                vlm_model="v",
                suggested_cluster_name="x" * 10_000,
                tags=[],
                primary_category=None,
                message_id=uuid.uuid4(),
                schema_version=1,
            ).to_bytes(),
        ),
        (
            MediaAnalyzed.routing_key,
            MediaAnalyzed(
                content_id=uuid.uuid4(),
                job_id=uuid.uuid4(),
                vlm_model="v",
                suggested_cluster_name="n",
            ).to_bytes(),
        ),
        (MediaUploaded.routing_key, b'{"upload_id": null}'),
    ]
    for key, body in hostile:
        await exchange.publish(aio_pika.Message(body, message_id=str(uuid.uuid4())), key)
    parked = await read_queue(amqp, embedded_queue.parking, expect=7, timeout=20)
    parked += await read_queue(amqp, analyzed_queue.parking, expect=3, timeout=20)
    parked += await read_queue(amqp, uploaded_queue.parking, expect=1, timeout=20)
    assert len(parked) == len(hostile)
    errors = [str(m.headers["x-error"]) for m in parked]
    assert sum("invalid message" in e for e in errors) == 8
    assert any("does not exist" in e for e in errors) and any("unknown model" in e for e in errors)
    # Each parked at once, never retried.
    assert all(m.headers["x-attempt"] == 1 for m in parked)

    # A valid message still goes through, and an upload event for unknown content is a no-op.
    ok = MediaEmbedded(
        content_id=good.content_id, job_id=uuid.uuid4(), kind="image", model_id=MODEL
    )
    await exchange.publish(aio_pika.Message(ok.to_bytes(), message_id="ok"), ok.routing_key)
    stray = MediaUploaded(upload_id=uuid.uuid4(), content_id=uuid.uuid4(), job_id=uuid.uuid4())
    await exchange.publish(
        aio_pika.Message(stray.to_bytes(), message_id="stray"), stray.routing_key
    )

    async def filed() -> bool:
        stage: str = await db.fetchval("SELECT stage FROM content WHERE id = $1", good.content_id)
        return stage == "clustered"

    await wait_for(filed, what="the good message filed")
    assert await read_queue(amqp, uploaded_queue.parking, expect=0, settle=0.5) == []
    await channel.close()


async def test_analysis_names_the_cluster_when_it_arrives_before_the_filing(
    clusterer_settings: Callable[..., ClustererSettings],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    async with running(clusterer_settings(bus_retry_delays=(0.2, 0.5, 1.0, 2.0))) as deps:
        vectors, labels = kinds(1, 1, dim=16, spread=0.2)
        [item] = await seed_embedded(db, deps.storage, MODEL, vectors, labels)
        analysed = MediaAnalyzed(
            content_id=item.content_id,
            job_id=uuid.uuid4(),
            vlm_model="vlm",
            suggested_cluster_name="Bricks",
        )
        await deps.bus.publish(analysed.routing_key, analysed.to_bytes(), message_id="a")
        await asyncio.sleep(0.1)  # the analysis is handled first and finds nothing filed yet
        filed = MediaEmbedded(
            content_id=item.content_id, job_id=uuid.uuid4(), kind="image", model_id=MODEL
        )
        await deps.bus.publish(filed.routing_key, filed.to_bytes(), message_id="e")

        async def named() -> bool:
            name: str | None = await db.fetchval("SELECT name FROM clusters")
            return name == "Bricks"

        await wait_for(named, what="the late filing named by the early analysis", timeout=15)


async def test_sweep_syncs_a_folder_left_waiting_when_a_crash_interrupted_a_command(
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    vectors, labels = kinds(1, 2, dim=16, spread=0.2)
    seeded = await seed_embedded(db, clusterer.storage, MODEL, vectors, labels)
    for item in seeded:
        event = MediaEmbedded(
            content_id=item.content_id, job_id=uuid.uuid4(), kind="image", model_id=MODEL
        )
        await handle_embedded(clusterer, event, DELIVERY)
    cluster_id = await db.fetchval("SELECT id FROM clusters")
    before = folder_snapshot(storage_path)
    storage = FileSystemStorage(storage_path)
    # What a crash leaves: a stale link, a missing one, a folder of a cluster that is gone.
    stray_object = await storage.put(_one(b"stray"))
    await storage.folders.link(
        stray_object.key, f"media/clusters/{cluster_id}/{uuid.uuid4()}_old.png"
    )
    (storage_path / sorted(before)[0]).unlink()
    gone = uuid.uuid4()
    await storage.folders.link(stray_object.key, f"media/clusters/{gone}/{uuid.uuid4()}.png")
    async with db.transaction():
        await request_folder_syncs(db, [cluster_id, gone])

    async def synced() -> bool:
        left: int = await db.fetchval("SELECT count(*) FROM folder_syncs")
        return left == 0

    await wait_for(synced, what="the sweep", timeout=10)
    assert folder_snapshot(storage_path) == before
    assert not (storage_path / "media" / "clusters" / str(gone)).exists()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
