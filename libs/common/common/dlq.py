"""The dead-letter recorder: stores each parked message in a table and fails its content.

Admins list, inspect, requeue and purge through the API, which reads that table: a broker
cannot list messages by job.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage

from common.bus import Bus
from common.metrics import JOB_DURATION, JOBS_PROCESSED, declare_stage
from common.topology import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    ORIGIN_ROUTING_KEY_HEADER,
    TRACEBACK_HEADER,
    QueueSpec,
)

log = structlog.get_logger(__name__)
# The recorder's own stage in job_processing_duration_seconds and jobs_processed_total.
DEAD_LETTER_STAGE = "dead_letter"


def _plain(value: Any) -> Any:
    """AMQP header values as JSON-able values (x-death holds dates and bytes)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def describe_death(headers: dict[str, Any]) -> tuple[str, int]:
    """The error text and attempt count of a parked message.

    Our consumer wrapper writes them in headers; the broker's own dead-lettering (delivery
    limit, overflow, expiry) leaves an x-death record instead.
    """
    if ERROR_HEADER in headers:
        return str(headers[ERROR_HEADER]), int(headers.get(ATTEMPT_HEADER, 1))
    deaths = headers.get("x-death") or []
    if deaths:
        death = deaths[0]
        reason = death.get("reason", "unknown")
        count = int(death.get("count", 1))
        return f"dead-lettered by the broker: {reason}", count
    return "dead-lettered without a recorded error", int(headers.get(ATTEMPT_HEADER, 1))


def original_routing_key(headers: dict[str, Any], received: str | None) -> str | None:
    """The routing key the message was first published with: our wrapper records it in a
    header; the broker's own dead-lettering keeps it in x-death (the message itself arrives
    keyed by the parking queue's name)."""
    if headers.get(ORIGIN_ROUTING_KEY_HEADER):
        return str(headers[ORIGIN_ROUTING_KEY_HEADER])
    deaths = headers.get("x-death") or []
    keys = deaths[0].get("routing-keys") if deaths and isinstance(deaths[0], dict) else None
    if keys:
        return str(keys[0])
    return received


def _uuid_field(body: dict[str, Any], key: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(body[key]))
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def _event_ids(raw: bytes) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """(content_id, job_id) of a message body, when it is an event that names them."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    return _uuid_field(body, "content_id"), _uuid_field(body, "job_id")


async def insert_dead_letter(
    conn: asyncpg.Connection,
    *,
    message_id: str,
    queue: str,
    routing_key: str | None,
    body: bytes,
    headers: dict[str, Any],
    error: str,
    attempts: int,
    traceback: str | None = None,
) -> None:
    """Store one dead letter (a message parked again replaces its earlier record)."""
    content_id, job_id = _event_ids(body)
    await conn.execute(
        """INSERT INTO dead_letters
               (message_id, queue, routing_key, body, headers, error, attempts,
                content_id, job_id, traceback)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (message_id, queue) DO UPDATE
           SET body = EXCLUDED.body, headers = EXCLUDED.headers,
               error = EXCLUDED.error, attempts = EXCLUDED.attempts,
               traceback = EXCLUDED.traceback, created_at = now(), requeued_at = NULL""",
        message_id,
        queue,
        routing_key,
        body,
        headers,
        error,
        attempts,
        content_id,
        job_id,
        traceback,
    )


class DeadLetterRecorder:
    """Consumes every parking queue and writes what it finds to `dead_letters`."""

    def __init__(
        self,
        bus: Bus,
        pool: asyncpg.Pool,
        specs: tuple[QueueSpec, ...],
        service: str = "gateway",
    ) -> None:
        self.service = service
        declare_stage(service, DEAD_LETTER_STAGE)
        self.bus = bus
        self.pool = pool
        self.specs = specs

    async def start(self) -> None:
        channel = await self.bus.channel(prefetch=20)
        for spec in self.specs:
            queue = await channel.get_queue(spec.parking)
            await queue.consume(self._handler_for(spec))

    def _handler_for(self, spec: QueueSpec) -> Any:
        async def on_message(message: AbstractIncomingMessage) -> None:
            await self.record(spec, message)

        return on_message

    async def record(self, spec: QueueSpec, message: AbstractIncomingMessage) -> None:
        start = time.perf_counter()
        outcome = await self._record(spec, message)
        JOB_DURATION.labels(self.service, DEAD_LETTER_STAGE).observe(time.perf_counter() - start)
        JOBS_PROCESSED.labels(self.service, outcome).inc()

    async def _record(self, spec: QueueSpec, message: AbstractIncomingMessage) -> str:
        headers = _plain(dict(message.headers or {}))
        error, attempts = describe_death(headers)
        # Kept in its own column (shown by the dead-letter API), not twice.
        trace_text = headers.pop(TRACEBACK_HEADER, None)
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            body = None
        body = body if isinstance(body, dict) else {}
        content_id = _uuid_field(body, "content_id")
        message_id = message.message_id or str(body.get("message_id") or uuid.uuid4())
        routing_key = original_routing_key(headers, message.routing_key)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await insert_dead_letter(
                    conn,
                    message_id=message_id,
                    queue=spec.name,
                    routing_key=routing_key,
                    body=message.body,
                    headers=headers,
                    error=error,
                    attempts=attempts,
                    traceback=str(trace_text) if trace_text is not None else None,
                )
                if spec.fails_content and content_id is not None:
                    # Compare-and-set: only content still on its way can fail.
                    await conn.execute(
                        """UPDATE content SET stage = 'failed', error = $2,
                                  stage_updated_at = now()
                           WHERE id = $1 AND stage IN ('ingested', 'embedded')""",
                        content_id,
                        error,
                    )
        except (asyncpg.PostgresError, OSError) as db_error:
            log.error("could not record dead letter", error=str(db_error))
            await message.nack(requeue=True)
            return "requeued"
        log.warning("dead letter recorded", queue=spec.name, error=error, content_id=content_id)
        await message.ack()
        return "ok"
