"""The transactional outbox: events are rows written with their cause, then relayed.

A relay claims unsent rows with FOR UPDATE SKIP LOCKED, publishes them with confirms and marks
them sent in the same transaction, so several relays can run side by side. A relay that dies
between publishing and committing leaves its rows unsent; they are published again
(at least once, never zero times).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge

from common.bus import Bus, BusUnavailable
from common.messages import Event

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("mammothbox.outbox")

OUTBOX_PENDING = Gauge("outbox_pending", "Outbox rows not yet published.")
OUTBOX_LAG = Gauge("outbox_lag_seconds", "Age of the oldest unpublished outbox row.")
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox rows published.")


def trace_headers() -> dict[str, str]:
    """The current trace context as W3C headers, to store with an event."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


async def add_events(conn: asyncpg.Connection, events: list[Event]) -> None:
    """Write events to the outbox inside the caller's transaction."""
    if not events:
        return
    headers = trace_headers()
    await conn.executemany(
        "INSERT INTO outbox (message_id, routing_key, body, headers)"
        " VALUES ($1, $2, $3, $4::text::jsonb)",
        [
            (e.message_id, e.routing_key, e.to_bytes(), orjson.dumps(headers).decode())
            for e in events
        ],
    )


@dataclass(frozen=True)
class OutboxState:
    pending: int
    lag_seconds: float


async def outbox_state(conn: asyncpg.Connection | asyncpg.Pool) -> OutboxState:
    row = await conn.fetchrow(
        """SELECT count(*) AS pending,
                  coalesce(extract(epoch FROM now() - min(created_at)), 0) AS lag
           FROM outbox WHERE sent_at IS NULL"""
    )
    assert row is not None
    return OutboxState(int(row["pending"]), float(row["lag"]))


class OutboxRelay:
    """Publishes outbox rows. `wake()` after a commit shortens the wait to near zero."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        batch_size: int = 200,
        poll_interval: float = 0.5,
        retention_seconds: float = 3600.0,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retention_seconds = retention_seconds
        self.state = OutboxState(0, 0.0)
        self._wake = asyncio.Event()
        self._last_cleanup = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Relay forever; survives database and broker outages."""
        while True:
            try:
                published = await self.relay_once()
                await self._refresh_state()
                await self._cleanup()
            except (BusUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("outbox relay paused", error=str(e))
                published = 0
                await asyncio.sleep(self.poll_interval)
            if published < self.batch_size:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except TimeoutError:
                    pass
                self._wake.clear()

    async def relay_once(self) -> int:
        """Claim, publish and mark one batch; returns how many rows were published."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, message_id, routing_key, queue, body, headers::text AS headers
                   FROM outbox
                   WHERE sent_at IS NULL ORDER BY id LIMIT $1
                   FOR UPDATE SKIP LOCKED""",
                self.batch_size,
            )
            if not rows:
                return 0
            await asyncio.gather(*(self._publish(row) for row in rows))
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
        OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)

    async def _publish(self, row: asyncpg.Record) -> None:
        headers: dict[str, Any] = orjson.loads(row["headers"])
        # Publish inside the upload's trace, so the consumer's span joins the same trace.
        parent = propagate.extract(headers)
        with tracer.start_as_current_span(f"publish {row['routing_key']}", context=parent):
            propagate.inject(headers)
            await self.bus.publish(
                row["queue"] or row["routing_key"],
                bytes(row["body"]),
                message_id=str(row["message_id"]),
                headers=headers,
                to_queue=row["queue"] is not None,
            )

    async def _refresh_state(self) -> None:
        self.state = await outbox_state(self.pool)
        OUTBOX_PENDING.set(self.state.pending)
        OUTBOX_LAG.set(self.state.lag_seconds)

    async def _cleanup(self) -> None:
        now = time.monotonic()
        if now - self._last_cleanup < 60:
            return
        self._last_cleanup = now
        await self.pool.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)",
            self.retention_seconds,
        )
