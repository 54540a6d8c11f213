"""Wiring: pool, bus, storage, the VLM client with its limits, labels, the consumer, probes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import structlog

from analyzer.handlers import AnalyzerDeps, handle_embedded
from analyzer.ratelimit import RateLimiter
from analyzer.settings import AnalyzerSettings
from analyzer.vlm import GeminiVlm
from common.bus import Bus
from common.consumer import Consumer, Delivery
from common.db import open_pool
from common.embed_client import TextEmbedClient
from common.labels import Labeler
from common.messages import MediaEmbedded
from common.probes import serve_worker
from common.storage import open_storage
from common.topology import spec_of

log = structlog.get_logger(__name__)


def vlm_status(settings: AnalyzerSettings, vlm: GeminiVlm | None) -> str:
    """What /health says of the VLM."""
    if not settings.vlm_enabled:
        return "disabled"
    if vlm is None:
        return "no key"
    return vlm.status


@contextlib.asynccontextmanager
async def running(settings: AnalyzerSettings) -> AsyncIterator[AnalyzerDeps]:
    """Start everything the analyzer needs; stop it all when the block ends."""
    storage = open_storage(settings.storage_backend, settings.storage_path)
    async with open_pool(settings) as pool:
        bus = Bus(settings)
        await bus.start(wait=10)
        limiter = RateLimiter(pool, settings.vlm_rate_limit_per_minute, settings.vlm_rate_window_s)
        vlm = GeminiVlm(settings, limiter) if settings.vlm_usable else None
        if vlm is None:
            log.warning(
                "Gemini is off; every image gets the CLIP fallback",
                reason="VLM_ENABLED=false" if not settings.vlm_enabled else "no GEMINI_API_KEY",
            )
        labeler = Labeler(
            TextEmbedClient(bus, timeout=settings.label_timeout_s),
            settings.analysis_labels,
            settings.analysis_label_template,
        )
        deps = AnalyzerDeps(settings, pool, bus, storage, labeler, vlm)

        def info() -> dict[str, object]:
            return {
                "service": "analyzer",
                "vlm": vlm_status(settings, vlm),
                "vlm_model": settings.vlm_model,
                "vlm_fallback_to_clip": settings.vlm_fallback_to_clip,
                "vlm_rate_limit_per_minute": settings.vlm_rate_limit_per_minute,
                "vlm_concurrency": settings.vlm_concurrency,
            }

        try:
            async with serve_worker(
                "analyzer",
                _consume(deps),
                pool,
                bus,
                info,
                settings.worker_http_host,
                settings.worker_http_port,
            ) as port:
                yield replace(deps, probe_port=port)
        finally:
            await bus.close()
            if vlm is not None:
                await vlm.close()


async def _consume(deps: AnalyzerDeps) -> None:
    await deps.bus.wait_connected(timeout=float("inf"))
    spec = spec_of(deps.bus.specs, "analyzer")

    async def handler(event: MediaEmbedded, delivery: Delivery) -> None:
        await handle_embedded(deps, event, delivery)

    consumer = Consumer(
        deps.bus,
        spec,
        MediaEmbedded,
        handler,
        service="analyzer",
        # Enough in flight to keep every VLM slot busy while others wait on the rate limit.
        prefetch=deps.settings.vlm_concurrency * 2,
    )
    await consumer.start()
    log.info("analyzer consuming", queue=spec.name, vlm=vlm_status(deps.settings, deps.vlm))


async def serve(settings: AnalyzerSettings) -> None:
    async with running(settings):
        await asyncio.Event().wait()
