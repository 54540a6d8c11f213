"""What the stage log (stage_runs) holds of one job's uploads."""

from __future__ import annotations

import uuid

import asyncpg

from gateway.repo.objects import Conn


async def stage_runs_of(
    conn: Conn, job_id: uuid.UUID, content_ids: list[uuid.UUID]
) -> list[asyncpg.Record]:
    """The job's own stage rows, and those of its content (processed for whichever job first
    stored it), oldest first. The caller has checked that the job is the scope's."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT stage, message_id, service, queue, job_id, content_id, upload_ids, queued_at,
                  published_at, started_at, last_started_at, finished_at, attempts,
                  work_seconds, outcome, error, trace_id
           FROM stage_runs
           WHERE job_id = $1 OR content_id = ANY($2::uuid[])
           ORDER BY started_at""",
        job_id,
        content_ids,
    )
    return rows
