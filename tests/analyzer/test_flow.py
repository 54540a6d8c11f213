"""The analyzer beside the clusterer: filing never waits for Gemini; the limit holds across
processes."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aio_pika
import asyncpg
import numpy as np

from analyzer.handlers import AnalyzerDeps
from clusterer.handlers import ClustererDeps
from common.messages import MediaEmbedded
from common.storage.filesystem import FileSystemStorage
from common.topology import spec_of
from common.vectors import register_model
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from tests.analyzer.fake_gemini import FakeGemini
from tests.clusterer.conftest import colour_png, consumers_on, wait_for
from tests.clusterer.test_pipeline import upload, wait_done
from tests.conftest import BusNames, service_env
from tests.integration.conftest import Gateway


async def test_image_is_filed_while_gemini_stalls_and_named_when_the_analysis_lands(
    gemini: FakeGemini,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    gemini.stall = asyncio.Event()
    async with start_analyzer(vlm_timeout=30):
        [upload_id] = await upload(gateway, ("red.png", colour_png(COLOURS["red"], seed=8)))
        await wait_done([upload_id], db, storage_path)  # embedded, clustered and linked
        row = await db.fetchrow(
            """SELECT c.analyzed_at, cl.name FROM uploads u JOIN content c ON c.id = u.content_id
               JOIN clusters cl ON cl.id = c.cluster_id WHERE u.id = $1""",
            uuid.UUID(upload_id),
        )
        assert row["analyzed_at"] is None and row["name"] == "red"  # the placeholder
        assert len(gemini.calls) == 1  # Gemini was asked, and is still thinking
        gemini.stall.set()

        async def named() -> bool:
            name: str | None = await db.fetchval(
                """SELECT cl.name FROM uploads u JOIN content c ON c.id = u.content_id
                   JOIN clusters cl ON cl.id = c.cluster_id
                   WHERE u.id = $1 AND c.analysis_model = 'gemini-test'""",
                uuid.UUID(upload_id),
            )
            return name == "Red studies"

        await wait_for(named, what="the analysis and the VLM's cluster name", timeout=15)


async def seed_images(
    db: asyncpg.Connection, storage: FileSystemStorage, count: int
) -> list[MediaEmbedded]:
    """Embedded image content (real PNGs on disk), and the events that announce it."""
    await register_model(db, "test/rate-3", 3)
    job = uuid.uuid4()
    await db.execute("INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'o', 'r')", job)
    events = []
    for i in range(count):
        data = colour_png(COLOURS["blue"], seed=100 + i)

        async def chunks(payload: bytes = data) -> AsyncIterator[bytes]:
            yield payload

        stored = await storage.put(chunks())
        content_id = uuid.uuid4()
        await db.execute(
            """INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key, stage,
                                    first_job_id)
               VALUES ($1, $2, 'image', 'image/png', $3, $4, 'embedded', $5)""",
            content_id,
            hashlib.sha256(data).hexdigest(),
            len(data),
            stored.key,
            job,
        )
        await db.execute(
            "INSERT INTO embeddings (content_id, model_id, embedding) VALUES ($1, 'test/rate-3', '[0,0,1]')",
            content_id,
        )
        events.append(
            MediaEmbedded(content_id=content_id, job_id=job, kind="image", model_id="test/rate-3")
        )
    return events


async def test_rate_limit_holds_across_two_analyzer_processes_when_images_pour_in(
    gemini: FakeGemini,
    database_url: str,
    bus_names: BusNames,
    storage_path: Path,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
    tmp_path: Path,
) -> None:
    limit, window, count = 3, 2.0, 10
    events = await seed_images(db, FileSystemStorage(storage_path, fsync=False), count)
    env = service_env(
        database_url,
        bus_names,
        storage_path,
        GEMINI_API_KEY="test-key",
        VLM_MODEL="gemini-test",
        VLM_BASE_URL=gemini.url,
        VLM_RATE_LIMIT_PER_MINUTE=str(limit),
        VLM_RATE_WINDOW_S=str(window),
        VLM_FALLBACK_TO_CLIP="false",  # every image must be analysed by Gemini
        WORKER_HTTP_PORT="0",
        LOG_LEVEL="WARNING",
    )
    logs = [open(tmp_path / f"analyzer-{i}.log", "wb") for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, "-m", "analyzer"], env=env, stdout=log, stderr=log)
        for log in logs
    ]
    try:
        queue = spec_of(bus_names.specs, "analyzer").name
        await wait_for(consumers_on(amqp, queue, 2), what="two analyzers consuming", timeout=60)
        channel = await amqp.channel()
        exchange = await channel.get_exchange(bus_names.exchange)
        for event in events:
            message = aio_pika.Message(event.to_bytes(), message_id=str(event.message_id))
            await exchange.publish(message, event.routing_key)
        await channel.close()

        async def all_analysed() -> bool:
            left: int = await db.fetchval("SELECT count(*) FROM content WHERE analyzed_at IS NULL")
            return left == 0

        await wait_for(all_analysed, what="every image analysed", timeout=60)
        assert all(p.poll() is None for p in procs), "an analyzer died"
    finally:
        for proc in procs:
            proc.terminate()
        for proc, log in zip(procs, logs, strict=True):
            proc.wait(timeout=10)
            log.close()
    models = await db.fetch("SELECT DISTINCT analysis_model FROM content")
    assert [r["analysis_model"] for r in models] == ["gemini-test"]
    arrivals = sorted(c.at for c in gemini.calls)
    assert len(arrivals) == count
    # In no window of `window` seconds did the server see more than `limit` calls.
    busiest = max(
        np.searchsorted(arrivals, t + window, side="left") - i for i, t in enumerate(arrivals)
    )
    assert busiest <= limit, arrivals
    # And the limit was the brake: the calls took about (count / limit - 1) windows.
    assert arrivals[-1] - arrivals[0] >= (count // limit - 1) * window
