"""Queues at their limit while images and JSON are ingested, through the real pipeline.

Nothing consumes JSON yet and no analyzer runs here, so with a small BUS_QUEUE_MAX_LENGTH
their queues fill for real. Images must keep flowing (a full JSON queue refuses only JSON;
a full analyzer queue only holds the embedder's second copy of each event back), the stall
must show in /health, /metrics and the log, and once the queues are drained everything
arrives by itself: nothing lost, nothing filed twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from clusterer.handlers import ClustererDeps
from common.messages import JsonIngested, MediaEmbedded
from embedder.handlers import EmbedderDeps
from tests.clusterer.conftest import colour_png, wait_for
from tests.clusterer.test_pipeline import upload
from tests.conftest import fill_queue
from tests.integration.conftest import Gateway

LIMIT = 4


@pytest.fixture
def common_settings(common_settings: dict[str, Any]) -> dict[str, Any]:
    """Every service of this test sees queues that hold only a few messages."""
    return {**common_settings, "bus_queue_max_length": LIMIT, "bus_pause_max_s": 1.0}


@pytest.fixture
async def small_gateway(start_gateway: Any) -> AsyncIterator[Gateway]:
    async with start_gateway(outbox_max_lag_seconds=1.0) as gateway:
        yield gateway


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def post_json(gateway: Gateway, n: int) -> Any:
    return await gateway.client.post("/api/v1/ingest", json={"doc": n, "tag": uuid.uuid4().hex})


class Drain:
    """A stand-in consumer that takes everything a queue receives."""

    def __init__(self) -> None:
        self.ids: list[str] = []  # content ids (media events) or upload ids (JSON events)

    async def __call__(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = orjson.loads(message.body)
        self.ids.extend(body["upload_ids"] if "upload_ids" in body else [body["content_id"]])


async def test_full_queues_refuse_only_their_own_kind_and_drain_by_themselves_when_freed(
    small_gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    gateway = small_gateway
    json_queue = gateway.json_queue
    analyzer_queue = next(s.name for s in gateway.specs if s.service == "analyzer")
    held_before = metric("jobs_processed_total", service="embedder", outcome="held")
    clusterer_before = metric("jobs_processed_total", service="clusterer", outcome="ok")
    with capture_logs() as logs:
        accepted_json = []
        for n in range(3 * LIMIT):
            response = await post_json(gateway, n)
            if response.status == 503:
                break
            assert response.status == 202, await response.text()
            accepted_json.extend((await response.json())["system_ids"])

        # The JSON queue fills; its events wait, and soon JSON ingest is refused, visibly.
        async def json_refused() -> bool:
            await gateway.deps.backpressure.refresh()
            response = await post_json(gateway, 1000)
            if response.status == 202:
                accepted_json.extend((await response.json())["system_ids"])
                return False
            assert response.status == 503 and "Retry-After" in response.headers
            return True

        await wait_for(json_refused, timeout=20, what="JSON ingest refused")
        health = await gateway.client.get("/health")
        body = await health.json()
        assert health.status == 429, body
        assert body["status"] == "degraded"
        destination = body["outbox"]["destinations"][JsonIngested.routing_key]
        assert destination["refused"]["reason"] == "full" and destination["lagging"]
        assert body["queues"][json_queue]["full"] is True
        metrics = await (await gateway.client.get("/metrics")).text()
        assert f'outbox_destination_stalled{{destination="{JsonIngested.routing_key}"}} 1.0' in (
            metrics
        )

        # Images are still taken and filed, while both full queues stay full. (The analyzer's
        # is filled first: a quorum queue enforces its limit a little late under a burst.)
        await fill_queue(amqp, analyzer_queue, b'{"content_id": "filler"}')
        image_ids = []
        for start in range(0, 8, 4):
            files = [(f"red{i}.png", colour_png((220, 30, 30), i)) for i in range(start, start + 4)]
            image_ids += await upload(gateway, *files)

        async def images_clustered() -> bool:
            stages = await db.fetch(
                """SELECT c.stage FROM uploads u JOIN content c ON c.id = u.content_id
                   WHERE u.id = ANY($1::uuid[])""",
                [uuid.UUID(u) for u in image_ids],
            )
            assert all(r["stage"] != "failed" for r in stages)
            return len(stages) == 8 and all(r["stage"] == "clustered" for r in stages)

        await wait_for(images_clustered, timeout=60, what="every image clustered")
        # The embedder met the full analyzer queue and held those messages back.
        await wait_for(
            lambda: asyncio.sleep(
                0, metric("jobs_processed_total", service="embedder", outcome="held") > held_before
            ),
            timeout=20,
            what="the embedder holding messages back",
        )

        # The embedder's own /health says what it waits for.
        async with aiohttp.ClientSession() as session:
            probe = f"http://127.0.0.1:{colour_embedder.probe_port}/health"
            async with session.get(probe) as response:
                worker = await response.json()
        assert response.status == 429 and worker["status"] == "degraded", worker
        assert worker["refused_publishes"][MediaEmbedded.routing_key]["reason"] == "full"

        # Free both queues: consumers appear and take everything.
        channel = await amqp.channel()
        json_drain, analyzer_drain = Drain(), Drain()
        await (await channel.get_queue(json_queue)).consume(json_drain, no_ack=True)
        await (await channel.get_queue(analyzer_queue)).consume(analyzer_drain, no_ack=True)
        loop = asyncio.get_running_loop()
        freed_at = loop.time()

        image_contents = {
            str(r["content_id"])
            for r in await db.fetch(
                "SELECT content_id FROM uploads WHERE id = ANY($1::uuid[])",
                [uuid.UUID(u) for u in image_ids],
            )
        }
        await wait_for(
            lambda: asyncio.sleep(0, set(json_drain.ids) == set(accepted_json)),
            timeout=30,
            what="every accepted JSON event delivered",
        )
        resumed_in = loop.time() - freed_at
        await wait_for(
            lambda: asyncio.sleep(0, image_contents <= set(analyzer_drain.ids)),
            timeout=30,
            what="every image's event delivered to the analyzer",
        )
        await wait_for(
            lambda: db.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"),
            timeout=10,
            what="the outbox drained",
        )
        await gateway.deps.backpressure.refresh()
        assert (await post_json(gateway, 2000)).status == 202
        await channel.close()

    assert resumed_in < 15, f"the relay took {resumed_in:.1f} s to resume"
    events = [entry["event"] for entry in logs]
    assert "outbox publishes refused; backing off from this destination" in events
    assert "outbox destination resumed" in events
    assert "outgoing publish refused; message put back, consumer paused" in events
    # Nothing lost, nothing failed, nothing filed twice despite the repeated media.embedded.
    assert len(json_drain.ids) == len(accepted_json)  # each relayed once
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert await db.fetchval("SELECT count(*) FROM content WHERE stage = 'failed'") == 0
    # The clusterer did get media.embedded more than once per image (each held message was
    # published again), and filed each image once all the same.
    handled = metric("jobs_processed_total", service="clusterer", outcome="ok") - clusterer_before
    assert handled > len(image_contents)
    filed = await db.fetchval("SELECT count(*) FROM content WHERE cluster_id IS NOT NULL")
    assert filed == len(image_contents) == 8
    assert await db.fetchval("SELECT sum(member_count) FROM clusters") == 8
