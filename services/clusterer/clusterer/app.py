"""Wiring: pool, bus, storage, labeler, outbox relay, consumers, command RPC, folder sweep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import structlog
from prometheus_client import Gauge

from clusterer import commands, folders
from clusterer.handlers import (
    ClustererDeps,
    ModelCache,
    handle_analyzed,
    handle_embedded,
    handle_uploaded,
)
from clusterer.settings import ClustererSettings
from common.bus import Bus
from common.consumer import Consumer, Delivery
from common.db import open_pool
from common.embed_client import TextEmbedClient
from common.labels import Labeler
from common.messages import Event, MediaAnalyzed, MediaEmbedded, MediaUploaded
from common.outbox import OutboxRelay
from common.probes import serve_worker
from common.rpc import RpcServer
from common.storage import open_storage
from common.topology import cluster_command_queue, spec_of

log = structlog.get_logger(__name__)

CLUSTERS = Gauge(
    "clusters", "Clusters, by model and whether provisional.", ["model", "provisional"]
)

E = TypeVar("E", bound=Event)


@contextlib.asynccontextmanager
async def running(settings: ClustererSettings) -> AsyncIterator[ClustererDeps]:
    """Start everything the clusterer needs; stop it all when the block ends."""
    storage = open_storage(settings.storage_backend, settings.storage_path)
    async with open_pool(settings) as pool:
        bus = Bus(settings)
        await bus.start(wait=10)
        labeler = Labeler(
            TextEmbedClient(bus, timeout=settings.label_timeout_s),
            settings.cluster_labels,
            settings.cluster_label_template,
        )
        # Commands write media.recluster events to the outbox; relay them from here too, so
        # refiling never waits on a gateway (several relays share the work safely).
        relay = OutboxRelay(pool, bus)
        deps = ClustererDeps(settings, pool, bus, storage, labeler, relay, ModelCache(settings))
        tasks = [
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(_sweep(deps), name="folder-sweep"),
        ]

        def info() -> dict[str, object]:
            return {
                "service": "clusterer",
                "cluster_threshold": settings.cluster_threshold,
                "threshold_explicit": settings.threshold_is_explicit,
                "labels": len(settings.cluster_labels),
            }

        try:
            async with serve_worker(
                "clusterer",
                _consume(deps),
                pool,
                bus,
                info,
                settings.worker_http_host,
                settings.worker_http_port,
                extra_checks=lambda: {"storage": storage.writable()},
            ) as port:
                yield replace(deps, probe_port=port)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await bus.close()


def _consumer(
    deps: ClustererDeps,
    model: type[E],
    handle: Callable[[ClustererDeps, E, Delivery], Awaitable[None]],
) -> Consumer[E]:
    async def handler(event: E, delivery: Delivery) -> None:
        await handle(deps, event, delivery)

    spec = spec_of(deps.bus.specs, "clusterer", model.routing_key)
    return Consumer(
        deps.bus, spec, model, handler, service="clusterer", prefetch=deps.settings.worker_threads
    )


async def _consume(deps: ClustererDeps) -> None:
    await deps.bus.wait_connected(timeout=float("inf"))
    consumers: list[Consumer[Any]] = [
        _consumer(deps, MediaEmbedded, handle_embedded),
        _consumer(deps, MediaUploaded, handle_uploaded),
        _consumer(deps, MediaAnalyzed, handle_analyzed),
    ]
    for consumer in consumers:
        await consumer.start()

    async def answer(body: bytes) -> bytes:
        return await commands.answer(deps, body)

    await RpcServer(
        deps.bus, cluster_command_queue(deps.settings.bus_queue_prefix), answer, prefetch=4
    ).start()
    log.info("clusterer consuming", queues=[c.spec.name for c in consumers])


async def _sweep(deps: ClustererDeps) -> None:
    """Sync folders a crash left waiting, and refresh the cluster gauge."""
    while True:
        try:
            synced = await folders.run_pending_syncs(deps.pool, deps.storage)
            if synced:
                log.info("synced folders left waiting", count=synced)
            rows = await deps.pool.fetch(
                "SELECT model_id, provisional, count(*) AS n FROM clusters GROUP BY 1, 2"
            )
            CLUSTERS.clear()
            for row in rows:
                CLUSTERS.labels(row["model_id"], str(row["provisional"]).lower()).set(row["n"])
        except Exception as error:
            log.warning("folder sweep failed", error=str(error))
        await asyncio.sleep(deps.settings.folder_sweep_interval_s)


async def serve(settings: ClustererSettings) -> None:
    async with running(settings):
        await asyncio.Event().wait()
