"""Backpressure: ingest answers 503 with Retry-After rather than accept what it cannot keep."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import asyncpg
import structlog
from prometheus_client import Gauge

from common.messages import JsonIngested, MediaIngested, MediaUploaded
from common.outbox import OutboxState, measure
from common.stages import UNFINISHED
from common.storage import Storage
from gateway.errors import ApiError
from gateway.repo.ops import oldest_unfinished
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

STORAGE_FREE = Gauge("storage_free_bytes", "Free bytes where content is stored.")
STORAGE_TOTAL = Gauge("storage_total_bytes", "Size of the file system content is stored on.")
OLDEST_UNFINISHED = Gauge(
    "oldest_unfinished_seconds",
    "Age of the oldest content still waiting in a stage, by stage.",
    ["stage"],
)
for _stage in UNFINISHED:
    OLDEST_UNFINISHED.labels(_stage)
# The events an upload of each kind writes: its ingest is refused only while these lag.
EVENTS_OF_KIND = {
    "image": (MediaIngested.routing_key, MediaUploaded.routing_key),
    "video": (MediaIngested.routing_key, MediaUploaded.routing_key),
    "json": (JsonIngested.routing_key,),
}


class Backpressure:
    """Refuses ingest with 503 while disk is low, or while the events it would write lag in
    the outbox (per destination: a full JSON queue does not refuse images); refreshed once a
    second."""

    def __init__(self, settings: GatewaySettings, pool: asyncpg.Pool, storage: Storage) -> None:
        self.settings = settings
        self.pool = pool
        self.storage = storage
        self.outbox = OutboxState(0, 0.0)
        self.destinations: dict[str, OutboxState] = {}
        # None where the backend has no free space to speak of (a bucket).
        self.free_bytes: int | None = None

    async def refresh(self) -> None:
        capacity = await self.storage.capacity()
        self.free_bytes = capacity.free
        if capacity.free is not None and capacity.total is not None:
            STORAGE_FREE.set(capacity.free)
            STORAGE_TOTAL.set(capacity.total)
        self.outbox, self.destinations = await measure(self.pool)
        ages = await oldest_unfinished(self.pool)
        for stage in UNFINISHED:
            OLDEST_UNFINISHED.labels(stage).set(ages[stage])

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("backpressure refresh failed", error=str(error))
            await asyncio.sleep(interval)

    def lagging(self, destination: str) -> bool:
        """Whether events to this destination wait longer, or pile higher, than allowed."""
        state = self.destinations.get(destination)
        return state is not None and (
            state.lag_seconds > self.settings.outbox_max_lag_seconds
            or state.pending > self.settings.outbox_max_pending
        )

    @property
    def disk_low(self) -> bool:
        return self.free_bytes is not None and self.free_bytes < self.settings.min_free_disk_bytes

    def check(self) -> None:
        """Raise 503 with Retry-After while storage is too full to take anything."""
        if self.disk_low:
            raise ApiError(
                503,
                "storage is low on free space",
                {"free_bytes": self.free_bytes},
                self._retry_after(),
            )

    def check_events(self, kinds: Iterable[str]) -> None:
        """Raise 503 with Retry-After while the events uploads of these kinds write lag."""
        for kind in sorted(set(kinds)):
            for destination in EVENTS_OF_KIND.get(kind, ()):
                if self.lagging(destination):
                    state = self.destinations[destination]
                    raise ApiError(
                        503,
                        f"the event outbox is lagging for {kind} uploads",
                        {
                            "destination": destination,
                            "pending": state.pending,
                            "lag_seconds": round(state.lag_seconds, 1),
                        },
                        self._retry_after(),
                    )

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_seconds)}
