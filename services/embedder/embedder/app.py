"""Wiring: pool, bus, storage, model, decoders, batcher, consumers, probes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import structlog

from common.bus import Bus
from common.consumer import Consumer, Delivery
from common.db import open_pool
from common.messages import MediaIngested
from common.probes import serve_worker
from common.storage import open_storage
from common.topology import spec_of
from common.vectors import register_model
from embedder.batching import ModelBatcher
from embedder.decoder_pool import DecoderPool
from embedder.handlers import EmbedderDeps, handle_ingested, saver
from embedder.model import OnnxModel
from embedder.rpc import ImageRpcServer, TextRpcServer
from embedder.settings import EmbedderSettings

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def running(settings: EmbedderSettings) -> AsyncIterator[EmbedderDeps]:
    """Start everything the embedder needs; stop it all when the block ends."""
    model = OnnxModel(
        settings.model_path,
        providers=settings.onnx_providers,
        threads=settings.intra_op_threads,
        variant=settings.model_variant,
    )
    storage = open_storage(settings.storage_backend, settings.storage_path)
    decoders = DecoderPool(
        model.manifest.preprocess,
        workers=settings.decode_workers,
        memory_limit_bytes=settings.decode_memory_mb * 2**20,
        timeout_s=settings.decode_timeout_s,
        thumbnail_size=settings.thumbnail_size,
        max_pixels=settings.max_image_pixels,
        video_max_frames=settings.video_max_frames,
    )
    batcher = ModelBatcher(
        model, max_batch=settings.max_batch_size, max_wait=settings.max_batch_wait_ms / 1000
    )
    async with contextlib.AsyncExitStack() as stack:  # stops in the reverse order
        stack.push_async_callback(decoders.close)
        await decoders.start()
        batcher.start()
        stack.push_async_callback(batcher.close)
        pool = await stack.enter_async_context(open_pool(settings))
        async with pool.acquire() as conn:
            await register_model(conn, model.model_id, model.dim, model.manifest.cluster_threshold)
        bus = Bus(settings)
        stack.push_async_callback(bus.close)
        await bus.start(wait=10)
        deps = EmbedderDeps(
            settings,
            pool,
            bus,
            storage,
            decoders,
            batcher,
            saver(pool, settings.near_duplicate_distance, settings.max_batch_size),
            model.model_id,
            model.dim,
        )

        def info() -> dict[str, object]:
            return {
                "service": "embedder",
                "model_id": model.model_id,
                "embedding_dim": model.dim,
                "variant": settings.model_variant,
                "provider": model.provider,
                "text_search": model.text is not None,
                "max_batch_size": settings.max_batch_size,
                "decode_workers": settings.decode_workers,
                "decode_workers_alive": decoders.alive,
            }

        async with serve_worker(
            "embedder",
            _consume(deps),
            pool,
            bus,
            info,
            settings.worker_http_host,
            settings.worker_http_port,
        ) as port:
            yield replace(deps, probe_port=port)


async def _consume(deps: EmbedderDeps) -> None:
    await deps.bus.wait_connected(timeout=float("inf"))
    await TextRpcServer(deps.bus, deps.batcher, deps.model_id).start()
    await ImageRpcServer(
        deps.bus, deps.batcher, deps.decoders, deps.storage.root / "tmp", deps.model_id
    ).start()
    spec = spec_of(deps.bus.specs, "embedder")

    async def handler(event: MediaIngested, delivery: Delivery) -> None:
        await handle_ingested(deps, event, delivery)

    consumer = Consumer(
        deps.bus,
        spec,
        MediaIngested,
        handler,
        service="embedder",
        # Enough in flight to fill a batch while the previous one runs.
        prefetch=max(deps.settings.max_batch_size * 2, deps.settings.worker_threads),
    )
    await consumer.start()
    log.info("embedder consuming", queue=spec.name, model=deps.model_id)


async def serve(settings: EmbedderSettings) -> None:
    async with running(settings):
        await asyncio.Event().wait()
