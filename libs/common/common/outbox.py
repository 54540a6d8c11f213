"""The transactional outbox: events are rows written with their cause, then relayed.

A relay claims unsent rows with FOR UPDATE SKIP LOCKED, publishes them with confirms and marks
them sent in the same transaction, so several relays can run side by side. A relay that dies
between publishing and committing leaves its rows unsent; they are published again
(at least once, never zero times).

A refused publish (a full queue, no route, a lost channel, no confirm in time) fails only its
row: the relay backs off for that destination, keeps publishing to every other one, and tries
again by itself. Rows waiting on a full queue wait as long as it takes; only a row the broker
can never route is parked, after a bound, where the dead-letter API shows it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge

from common.aio import wait_event
from common.bus import Bus, BusUnavailable, PublishRefused
from common.dlq import insert_dead_letter
from common.messages import Event
from common.topology import ENQUEUED_AT_HEADER

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("mammothbox.outbox")

OUTBOX_PENDING = Gauge("outbox_pending", "Outbox rows not yet published.")
OUTBOX_LAG = Gauge("outbox_lag_seconds", "Age of the oldest unpublished outbox row.")
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox rows published.")
OUTBOX_DESTINATION_PENDING = Gauge(
    "outbox_destination_pending", "Outbox rows not yet published, by destination.", ["destination"]
)
OUTBOX_DESTINATION_LAG = Gauge(
    "outbox_destination_lag_seconds",
    "Age of the oldest unpublished outbox row, by destination.",
    ["destination"],
)
OUTBOX_STALLED = Gauge(
    "outbox_destination_stalled",
    "1 while this relay backs off from a destination whose publishes are refused.",
    ["destination"],
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "outbox_publish_failures_total",
    "Outbox rows whose publish failed, by destination and reason.",
    ["destination", "reason"],
)
OUTBOX_PARKED = Counter(
    "outbox_parked_total", "Outbox rows parked as unroutable, by destination.", ["destination"]
)
# Where a parked outbox row shows in dead_letters (its `queue`).
OUTBOX_PARKING = "outbox"


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


# A row's destination: the queue it names (a requeued dead letter), else its routing key.
_DESTINATION = "coalesce(queue, routing_key)"


async def destination_states(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, OutboxState]:
    """Pending rows and the oldest one's age per destination (only those with rows waiting)."""
    rows = await conn.fetch(
        f"""SELECT {_DESTINATION} AS destination, count(*) AS pending,
                   extract(epoch FROM now() - min(created_at)) AS lag
            FROM outbox WHERE sent_at IS NULL GROUP BY 1"""
    )
    return {r["destination"]: OutboxState(int(r["pending"]), float(r["lag"])) for r in rows}


_GAUGED: set[str] = set()


async def measure(pool: asyncpg.Pool) -> tuple[OutboxState, dict[str, OutboxState]]:
    """The outbox's backlog in all and per destination, also set on the outbox gauges."""
    destinations = await destination_states(pool)
    total = OutboxState(
        sum(s.pending for s in destinations.values()),
        max((s.lag_seconds for s in destinations.values()), default=0.0),
    )
    OUTBOX_PENDING.set(total.pending)
    OUTBOX_LAG.set(total.lag_seconds)
    for name in _GAUGED - destinations.keys():  # drained since: say so rather than go stale
        OUTBOX_DESTINATION_PENDING.labels(name).set(0)
        OUTBOX_DESTINATION_LAG.labels(name).set(0)
    for name, state in destinations.items():
        OUTBOX_DESTINATION_PENDING.labels(name).set(state.pending)
        OUTBOX_DESTINATION_LAG.labels(name).set(state.lag_seconds)
    _GAUGED.update(destinations)
    return total, destinations


@dataclass
class Stall:
    """A destination this relay backs off from, since its publishes were refused."""

    reason: str
    error: str
    since: float  # wall-clock time of the first refusal
    failures: int = 0
    retry_at: float = 0.0  # monotonic
    logged_at: float = 0.0  # monotonic


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
        max_backoff: float = 10.0,
        park_unroutable_after: float | None = None,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retention_seconds = retention_seconds
        self.max_backoff = max_backoff
        self.park_unroutable_after = (
            bus.settings.outbox_park_unroutable_after_s
            if park_unroutable_after is None
            else park_unroutable_after
        )
        self.state = OutboxState(0, 0.0)
        self.stalls: dict[str, Stall] = {}
        self._wake = asyncio.Event()
        self._last_cleanup = 0.0
        self._last_refresh = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Relay forever; survives database and broker outages and any refused publish."""
        while True:
            try:
                published = await self.relay_once()
                await self._refresh_state()
                await self._cleanup()
            except (BusUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("outbox relay paused", error=str(e) or type(e).__name__)
                published = 0
                await asyncio.sleep(self.poll_interval)
            except Exception:
                # Never die silently: a relay that stops stops all ingest after a while.
                log.exception("outbox relay error; carrying on")
                published = 0
                await asyncio.sleep(self.poll_interval)
            if published < self.batch_size:
                await wait_event(self._wake, self._wait_time())
                self._wake.clear()

    def _wait_time(self) -> float:
        """The poll interval, or less when a backed-off destination is due sooner."""
        now = time.monotonic()
        due = [s.retry_at - now for s in self.stalls.values() if s.retry_at > now]
        return max(0.01, min([self.poll_interval, *due]))

    def blocked(self) -> list[str]:
        """Destinations backed off from right now."""
        now = time.monotonic()
        return [d for d, s in self.stalls.items() if s.retry_at > now]

    async def relay_once(self) -> int:
        """Claim, publish and mark one batch; returns how many rows were published.

        Rows of destinations in back-off are not claimed, so one full queue never holds up
        the others. Raises BusUnavailable when the broker is not connected.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"""SELECT id, message_id, routing_key, queue, body, headers::text AS headers,
                           attempts, {_DESTINATION} AS destination,
                           extract(epoch FROM now() - created_at) AS age,
                           extract(epoch FROM created_at) AS enqueued_at
                    FROM outbox
                    WHERE sent_at IS NULL AND NOT ({_DESTINATION} = ANY($2::text[]))
                    ORDER BY id LIMIT $1
                    FOR UPDATE SKIP LOCKED""",
                self.batch_size,
                self.blocked(),
            )
            if not rows:
                return 0
            results = await asyncio.gather(
                *(self._publish(row) for row in rows), return_exceptions=True
            )
            sent = [row for row, result in zip(rows, results, strict=True) if result is None]
            failed = [
                (row, result)
                for row, result in zip(rows, results, strict=True)
                if isinstance(result, BaseException) and not isinstance(result, BusUnavailable)
            ]
            if sent:
                await conn.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in sent],
                )
            if failed:
                await self._record_failures(conn, failed)
        OUTBOX_PUBLISHED.inc(len(sent))
        self._note(sent, failed)
        if len(sent) + len(failed) < len(rows):
            raise BusUnavailable("bus not connected")
        return len(sent)

    async def _record_failures(
        self, conn: asyncpg.Connection, failed: list[tuple[asyncpg.Record, BaseException]]
    ) -> None:
        """Count each failed row's attempt; park rows that can never be routed."""
        await conn.executemany(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
            [(row["id"], _describe(error)[1][:2000]) for row, error in failed],
        )
        for row, error in failed:
            if (
                isinstance(error, PublishRefused)
                and error.reason == "unroutable"
                and row["attempts"] + 1 >= 3
                and float(row["age"]) >= self.park_unroutable_after
            ):
                await self._park(conn, row, str(error))

    async def _park(self, conn: asyncpg.Connection, row: asyncpg.Record, error: str) -> None:
        text = f"unroutable: no queue takes {row['destination']!r} ({error})"
        await conn.execute(
            "UPDATE outbox SET sent_at = now(), parked_at = now(), last_error = $2 WHERE id = $1",
            row["id"],
            text[:2000],
        )
        await insert_dead_letter(
            conn,
            message_id=str(row["message_id"]),
            queue=OUTBOX_PARKING,
            routing_key=row["routing_key"],
            body=bytes(row["body"]),
            headers=orjson.loads(row["headers"]),
            error=text[:2000],
            attempts=row["attempts"] + 1,
        )
        OUTBOX_PARKED.labels(row["destination"]).inc()
        log.error("outbox row parked: it can never be routed", destination=row["destination"])

    def _note(
        self, sent: list[asyncpg.Record], failed: list[tuple[asyncpg.Record, BaseException]]
    ) -> None:
        """Back off from destinations that refused; resume those that took a message."""
        now = time.monotonic()
        for row in sent:
            stall = self.stalls.pop(row["destination"], None)
            if stall is not None:
                OUTBOX_STALLED.labels(row["destination"]).set(0)
                log.warning(
                    "outbox destination resumed",
                    destination=row["destination"],
                    stalled_seconds=round(time.time() - stall.since, 1),
                    refused=stall.failures,
                )
        for destination, errors in _by_destination(failed).items():
            reason, text = _describe(errors[-1])
            for error in errors:
                OUTBOX_PUBLISH_FAILURES.labels(destination, _describe(error)[0]).inc()
            stall = self.stalls.get(destination)
            if stall is None:
                stall = self.stalls[destination] = Stall(reason, text, time.time())
                OUTBOX_STALLED.labels(destination).set(1)
            stall.reason, stall.error = reason, text
            stall.failures += len(errors)
            backoff = min(self.max_backoff, self.poll_interval * 2 ** min(stall.failures, 16))
            stall.retry_at = now + backoff
            if now - stall.logged_at >= 60:  # one line when it starts, then once a minute
                stall.logged_at = now
                log.warning(
                    "outbox publishes refused; backing off from this destination",
                    destination=destination,
                    reason=reason,
                    error=text,
                    refused=stall.failures,
                    retry_in_s=round(backoff, 2),
                )

    async def _publish(self, row: asyncpg.Record) -> None:
        headers: dict[str, Any] = orjson.loads(row["headers"])
        # The event waited from its row's commit: the timeline counts that wait too.
        headers.setdefault(ENQUEUED_AT_HEADER, int(float(row["enqueued_at"]) * 1000))
        # Publish inside the upload's trace, so the consumer's span joins the same trace.
        parent = propagate.extract(headers, context=otel_context.Context())
        with tracer.start_as_current_span(f"publish {row['routing_key']}", context=parent):
            propagate.inject(headers)
            await self.bus.publish(
                row["queue"] or row["routing_key"],
                bytes(row["body"]),
                message_id=str(row["message_id"]),
                headers=headers,
                to_queue=row["queue"] is not None,
            )

    def report(self) -> dict[str, dict[str, Any]]:
        """The destinations this relay backs off from, for /health."""
        now = time.time()
        return {
            destination: {
                "reason": s.reason,
                "error": s.error,
                "refused": s.failures,
                "stalled_seconds": round(now - s.since, 1),
            }
            for destination, s in self.stalls.items()
        }

    async def _refresh_state(self) -> None:
        """At most twice a second: the backlog; stalls of destinations with nothing left end."""
        now = time.monotonic()
        if now - self._last_refresh < 0.5:
            return
        self._last_refresh = now
        self.state, destinations = await measure(self.pool)
        for name in self.stalls.keys() - destinations.keys():
            del self.stalls[name]
            OUTBOX_STALLED.labels(name).set(0)

    async def _cleanup(self) -> None:
        now = time.monotonic()
        if now - self._last_cleanup < 60:
            return
        self._last_cleanup = now
        await self.pool.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)",
            self.retention_seconds,
        )


def _describe(error: BaseException) -> tuple[str, str]:
    """(reason, text) of a failed publish."""
    if isinstance(error, PublishRefused):
        return error.reason, str(error)
    return "error", f"{type(error).__name__}: {error}"


def _by_destination(
    failed: list[tuple[asyncpg.Record, BaseException]],
) -> dict[str, list[BaseException]]:
    grouped: dict[str, list[BaseException]] = {}
    for row, error in failed:
        grouped.setdefault(row["destination"], []).append(error)
    return grouped
