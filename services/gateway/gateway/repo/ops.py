"""What the probes and the backpressure ask the database."""

from __future__ import annotations

import asyncpg

from common.stages import UNFINISHED

# One index probe per stage (literal stages match the partial index), not a scan.
_OLDEST_UNFINISHED = """SELECT
  extract(epoch FROM now() - (SELECT min(stage_updated_at) FROM content
                              WHERE stage = 'ingested')) AS ingested,
  extract(epoch FROM now() - (SELECT min(stage_updated_at) FROM content
                              WHERE stage = 'embedded')) AS embedded"""


async def ping(pool: asyncpg.Pool) -> None:
    """One round trip: raises when the database does not answer."""
    await pool.fetchval("SELECT 1")


async def oldest_unfinished(pool: asyncpg.Pool) -> dict[str, float]:
    """Seconds since the oldest content entered each unfinished stage (0 when none waits).

    A gauge over every owner's content, never shown to a request: no owner scope applies."""
    row = await pool.fetchrow(_OLDEST_UNFINISHED)
    assert row is not None
    return {stage: float(row[stage] or 0.0) for stage in UNFINISHED}


async def waiting_dead_letters(pool: asyncpg.Pool) -> dict[str, int]:
    """Dead letters recorded and neither requeued nor purged, by origin queue.

    A gauge over every owner's dead letters, never shown to a request: no owner scope applies."""
    rows = await pool.fetch(
        "SELECT queue, count(*) AS n FROM dead_letters WHERE requeued_at IS NULL GROUP BY queue"
    )
    return {row["queue"]: row["n"] for row in rows}
