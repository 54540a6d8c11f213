"""The stage log: when each message a consumer handled was queued, started and finished.

The consumer wrapper reports each delivery's start and end; this buffers the reports and
writes them in one statement every `interval` seconds (and when it closes), so the timeline
(`GET /api/v1/ingest/{job_id}/timeline`) costs a worker one small write per flush rather than
two per message. It is observability, not state: the stages themselves advance by
compare-and-set in the handlers, and a report this cannot write (the database down, the buffer
full, the process killed) is counted and dropped, never retried at the expense of work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import structlog
from prometheus_client import Counter

log = structlog.get_logger(__name__)

DROPPED = Counter(
    "stage_log_dropped_total",
    "Stage reports not written (database unavailable or buffer full), by reason.",
    ["reason"],
)
for _reason in ("buffer_full", "write_failed"):
    DROPPED.labels(_reason)

# What a delivery's end means for its stage: done, waiting for another attempt, or given up.
FINAL = {"ok": "ok", "dead_lettered": "failed"}
OUTCOMES = {"running", "ok", "retrying", "failed"}


def stage_outcome(delivery_outcome: str) -> str:
    """The stage's outcome after a delivery ended with the consumer's outcome."""
    return FINAL.get(delivery_outcome, "retrying")


@dataclass
class _Row:
    """One (stage, message) as the reports since the last flush leave it."""

    stage: str
    message_id: uuid.UUID
    service: str
    queue: str
    job_id: uuid.UUID | None
    content_id: uuid.UUID | None
    upload_ids: list[uuid.UUID]
    queued_at: datetime | None
    published_at: datetime | None
    started_at: datetime
    last_started_at: datetime
    attempts: int
    trace_id: str | None
    finished_at: datetime | None = None
    work_seconds: float = 0.0
    outcome: str = "running"
    error: str | None = None

    @property
    def upload_list(self) -> str:
        """The upload ids as the statement takes them (a uuid[] per row cannot be unnested)."""
        return ",".join(str(u) for u in self.upload_ids)


@dataclass(frozen=True)
class Delivery:
    """What the consumer knows of a delivery when it starts."""

    stage: str
    message_id: uuid.UUID
    service: str
    queue: str
    attempt: int
    job_id: uuid.UUID | None = None
    content_id: uuid.UUID | None = None
    upload_ids: list[uuid.UUID] = field(default_factory=list)
    queued_at: float | None = None
    published_at: float | None = None
    trace_id: str | None = None


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


# The statement's parameters, in order: one array each, a row's values at one index.
_COLUMNS = ("stage", "message_id", "service", "queue", "job_id", "content_id", "upload_list",
            "queued_at", "published_at", "started_at", "last_started_at", "finished_at",
            "attempts", "work_seconds", "outcome", "error", "trace_id")  # fmt: skip

_UPSERT = """
INSERT INTO stage_runs AS s (stage, message_id, service, queue, job_id, content_id, upload_ids,
                             queued_at, published_at, started_at, last_started_at, finished_at,
                             attempts, work_seconds, outcome, error, trace_id)
SELECT t.stage, t.message_id, t.service, t.queue, t.job_id, t.content_id,
       string_to_array(t.upload_ids, ',')::uuid[], t.queued_at, t.published_at, t.started_at,
       t.last_started_at, t.finished_at, t.attempts, t.work_seconds, t.outcome, t.error,
       t.trace_id
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::uuid[], $7::text[],
            $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
            $12::timestamptz[], $13::int[], $14::float8[], $15::text[], $16::text[], $17::text[])
     AS t(stage, message_id, service, queue, job_id, content_id, upload_ids, queued_at,
          published_at, started_at, last_started_at, finished_at, attempts, work_seconds,
          outcome, error, trace_id)
ON CONFLICT (stage, message_id) DO UPDATE SET
    started_at = least(s.started_at, EXCLUDED.started_at),
    queued_at = coalesce(s.queued_at, EXCLUDED.queued_at),
    published_at = coalesce(s.published_at, EXCLUDED.published_at),
    attempts = greatest(s.attempts, EXCLUDED.attempts),
    work_seconds = s.work_seconds + EXCLUDED.work_seconds,
    -- The latest delivery's word: an older report arriving late changes nothing but the sums.
    last_started_at = greatest(s.last_started_at, EXCLUDED.last_started_at),
    outcome = CASE WHEN EXCLUDED.last_started_at >= s.last_started_at
                   THEN EXCLUDED.outcome ELSE s.outcome END,
    finished_at = CASE WHEN EXCLUDED.last_started_at >= s.last_started_at
                       THEN EXCLUDED.finished_at ELSE s.finished_at END,
    error = coalesce(EXCLUDED.error, s.error)
"""


class StageLog:
    """Buffer of stage reports, flushed by a background task (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval: float = 0.25,
        max_rows: int = 20_000,
        retention_days: float = 30.0,
        prune_every_s: float = 600.0,
    ):
        self.pool = pool
        self.interval = interval
        self.max_rows = max_rows
        self.retention_days = retention_days
        self.prune_every_s = prune_every_s
        self._pruned_at = time.monotonic()
        self._rows: dict[tuple[str, uuid.UUID], _Row] = {}
        self._task: asyncio.Task[None] | None = None

    def started(self, delivery: Delivery, at: float) -> None:
        key = (delivery.stage, delivery.message_id)
        when = _when(at)
        assert when is not None
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) >= self.max_rows:
                DROPPED.labels("buffer_full").inc()
                return
            self._rows[key] = _Row(
                delivery.stage,
                delivery.message_id,
                delivery.service,
                delivery.queue,
                delivery.job_id,
                delivery.content_id,
                delivery.upload_ids,
                _when(delivery.queued_at),
                _when(delivery.published_at),
                when,
                when,
                delivery.attempt,
                delivery.trace_id,
            )
            return
        row.last_started_at = when
        row.attempts = max(row.attempts, delivery.attempt)
        row.outcome, row.finished_at = "running", None

    def finished(
        self, delivery: Delivery, started: float, ended: float, outcome: str, error: str | None
    ) -> None:
        """The delivery that started at `started` (as reported) ended with the consumer's
        `outcome` (ok, retried, requeued, held, dead_lettered)."""
        key = (delivery.stage, delivery.message_id)
        if key not in self._rows:  # its start was flushed already: a fresh row for the end
            self.started(delivery, started)
        row = self._rows.get(key)
        if row is None:
            return
        state = stage_outcome(outcome)
        row.work_seconds += max(0.0, ended - started)
        row.outcome = state
        row.finished_at = _when(ended) if state in ("ok", "failed") else None
        if error is not None:
            row.error = error[:2000]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stage-log")

    async def close(self) -> None:
        """Stop the flusher and write what is buffered (the last reports of a clean stop)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
            if self.retention_days and time.monotonic() - self._pruned_at >= self.prune_every_s:
                self._pruned_at = time.monotonic()
                await self.prune()

    async def prune(self, batch: int = 10_000) -> int:
        """Remove rows older than the retention, a batch at a time (every replica may)."""
        removed = 0
        while True:
            try:
                done = await self.pool.execute(
                    """DELETE FROM stage_runs WHERE ctid IN (
                         SELECT ctid FROM stage_runs
                         WHERE started_at < now() - make_interval(secs => $1)
                         LIMIT $2)""",
                    self.retention_days * 86400,
                    batch,
                )
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
                log.warning("stage log not pruned", error=str(error))
                return removed
            count = int(done.split()[-1])
            removed += count
            if count < batch:
                return removed

    async def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = list(self._rows.values()), {}
        try:
            await self.pool.execute(
                _UPSERT, *([getattr(r, name) for r in rows] for name in _COLUMNS)
            )
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
            DROPPED.labels("write_failed").inc(len(rows))
            log.warning("stage log not written", rows=len(rows), error=str(error))
