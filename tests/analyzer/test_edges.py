"""Hostile messages, unreadable images, no Gemini at all, and models without a text encoder."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg

from analyzer.handlers import AnalyzerDeps
from common.messages import MediaEmbedded
from common.storage.filesystem import FileSystemStorage
from common.topology import spec_of
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from tests.analyzer.fake_gemini import FakeGemini
from tests.analyzer.test_scenarios import analysed
from tests.clusterer.conftest import colour_png
from tests.clusterer.test_pipeline import upload
from tests.conftest import BusNames, read_queue
from tests.integration.conftest import Gateway


async def _store(storage: FileSystemStorage, data: bytes) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    return (await storage.put(chunks())).key


async def test_analyzer_parks_hostile_messages_and_falls_back_when_the_image_is_unreadable(
    gemini: FakeGemini,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    colour_embedder: EmbedderDeps,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
    bus_names: BusNames,
    storage_path: Path,
) -> None:
    async with start_analyzer() as deps:
        # Embedded content whose stored file is not an image after all (a disk gone bad).
        key = await _store(FileSystemStorage(storage_path), b"\x89PNG\r\n\x1a\n then garbage")
        job, content_id = uuid.uuid4(), uuid.uuid4()
        await db.execute("INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'o', 'r')", job)
        await db.execute(
            """INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key, stage,
                                    first_job_id)
               VALUES ($1, $2, 'image', 'image/png', 10, $3, 'embedded', $4)""",
            content_id,
            uuid.uuid4().hex * 2,
            key,
            job,
        )
        red = "[" + ",".join("1" if c == "red" else "0" for c in COLOURS) + "]"
        await db.execute(
            "INSERT INTO embeddings (content_id, model_id, embedding) VALUES ($1, $2, $3::vector)",
            content_id,
            colour_embedder.model_id,
            red,
        )
        spec = spec_of(bus_names.specs, "analyzer")
        channel = await amqp.channel()
        exchange = await channel.get_exchange(bus_names.exchange)
        hostile = [
            b"\x00\xff not json",
            b"{}",
            b'{"content_id": "' + str(content_id).encode() + b'", "kind": "sound"}',
            b"[" * 50_000,
            MediaEmbedded(
                content_id=uuid.uuid4(), job_id=job, kind="image", model_id="m"
            ).to_bytes(),
        ]
        for body in hostile:
            await exchange.publish(
                aio_pika.Message(body, message_id=str(uuid.uuid4())), MediaEmbedded.routing_key
            )
        good = MediaEmbedded(
            content_id=content_id, job_id=job, kind="image", model_id=colour_embedder.model_id
        )
        await exchange.publish(
            aio_pika.Message(good.to_bytes(), message_id="good"), good.routing_key
        )
        parked = await read_queue(amqp, spec.parking, expect=len(hostile), timeout=15)
        assert len(parked) == len(hostile)
        assert all(m.headers["x-attempt"] == 1 for m in parked)
        row = await db.fetchrow(
            "SELECT analysis_model, tags, stage FROM content WHERE id = $1", content_id
        )
        assert row["analysis_model"] == "clip-fallback" and row["tags"][0] == "red"
        assert row["stage"] == "embedded"  # the analyzer never fails or moves the content
        assert gemini.calls == []  # nothing readable to send
        assert deps.vlm is not None and deps.vlm.status == "ok"
        await channel.close()


async def test_analyzer_falls_back_without_calls_when_gemini_is_disabled(
    gemini: FakeGemini,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    db: asyncpg.Connection,
) -> None:
    async with start_analyzer(vlm_enabled=False) as deps:
        [upload_id] = await upload(gateway, ("blue.png", colour_png(COLOURS["blue"], seed=9)))
        row = await analysed(db, upload_id)
        assert row["analysis_model"] == "clip-fallback" and row["tags"][0] == "blue"
        assert row["analysis"]["suggested_cluster_name"] == "blue"
        assert gemini.calls == []
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{deps.probe_port}/health") as response:
                assert (await response.json())["vlm"] == "disabled"


async def test_fallback_stores_an_analysis_without_tags_when_the_model_has_no_text_encoder(
    gemini: FakeGemini,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    start_embedder: Callable[[Path, str], AbstractAsyncContextManager[EmbedderDeps]],
    lite2_models: Path,
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    async with (
        start_embedder(lite2_models, "efficientnet-lite2"),
        start_analyzer(gemini_api_key=None),
    ):
        [upload_id] = await upload(gateway, ("red.png", colour_png(COLOURS["red"], seed=10)))
        row = await analysed(db, upload_id)
        assert row["analysis_model"] == "clip-fallback" and row["tags"] == []
        assert "no text encoder" in row["analysis"]["note"]
