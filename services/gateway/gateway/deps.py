"""What handlers share: the pool, the bus, storage, the relay, backpressure; and metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import Gauge, Histogram

from common.bus import Bus
from common.embed_client import ImageEmbedClient, TextEmbedClient
from common.outbox import OUTBOX_LAG, OUTBOX_PENDING, OutboxRelay, OutboxState, outbox_state
from common.rpc import RpcClient
from common.storage import FileSystemStorage
from gateway.batcher import IngestBatcher
from gateway.errors import ApiError
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

INGEST_LATENCY = Histogram(
    "ingest_latency_seconds",
    "Time from request start to 202, for accepted ingests.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STORAGE_FREE = Gauge("storage_free_bytes", "Free bytes where content is stored.")
OLDEST_UNFINISHED = Gauge(
    "oldest_unfinished_seconds",
    "Age of the oldest content still waiting in a stage, by stage.",
    ["stage"],
)
UNFINISHED_STAGES = ("ingested", "embedded")


class Backpressure:
    """Refuses ingest with 503 while disk is low or the outbox lags; refreshed once a second."""

    def __init__(
        self, settings: GatewaySettings, pool: asyncpg.Pool, storage: FileSystemStorage
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.storage = storage
        self.outbox = OutboxState(0, 0.0)
        self.free_bytes = storage.free_bytes()

    async def refresh(self) -> None:
        self.free_bytes = await asyncio.to_thread(self.storage.free_bytes)
        STORAGE_FREE.set(self.free_bytes)
        self.outbox = await outbox_state(self.pool)
        OUTBOX_PENDING.set(self.outbox.pending)
        OUTBOX_LAG.set(self.outbox.lag_seconds)
        # One index probe per stage (literal stages match the partial index), not a scan.
        row = await self.pool.fetchrow(
            """SELECT
                 extract(epoch FROM now() - (SELECT min(stage_updated_at) FROM content
                                             WHERE stage = 'ingested')) AS ingested,
                 extract(epoch FROM now() - (SELECT min(stage_updated_at) FROM content
                                             WHERE stage = 'embedded')) AS embedded"""
        )
        assert row is not None
        for stage in UNFINISHED_STAGES:
            OLDEST_UNFINISHED.labels(stage).set(float(row[stage] or 0.0))

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("backpressure refresh failed", error=str(error))
            await asyncio.sleep(interval)

    def check(self) -> None:
        """Raise 503 with Retry-After when the gateway cannot keep more."""
        retry = {"Retry-After": str(self.settings.retry_after_seconds)}
        if self.free_bytes < self.settings.min_free_disk_bytes:
            raise ApiError(
                503, "storage is low on free space", {"free_bytes": self.free_bytes}, retry
            )
        if (
            self.outbox.lag_seconds > self.settings.outbox_max_lag_seconds
            or self.outbox.pending > self.settings.outbox_max_pending
        ):
            raise ApiError(
                503,
                "the event outbox is lagging",
                {"pending": self.outbox.pending, "lag_seconds": round(self.outbox.lag_seconds, 1)},
                retry,
            )


@dataclass(frozen=True)
class Deps:
    settings: GatewaySettings
    pool: asyncpg.Pool
    bus: Bus
    storage: FileSystemStorage
    backpressure: Backpressure
    relay: OutboxRelay | None
    batcher: IngestBatcher
    cluster_commands: RpcClient
    text_embeddings: TextEmbedClient
    image_embeddings: ImageEmbedClient
    started_at: float = field(default_factory=time.time)

    def wake_relay(self) -> None:
        if self.relay is not None:
            self.relay.wake()


DEPS: web.AppKey[Deps] = web.AppKey("deps", Deps)
