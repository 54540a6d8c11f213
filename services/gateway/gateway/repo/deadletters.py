"""Dead letters as a request sees them: listed, inspected, requeued and purged in the scope.

A dead letter is the scope's when its job is the owner's (dead letters without a job are
seen by unbound keys only).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

import asyncpg
import orjson

from common.outbox import OUTBOX_PARKING
from common.topology import ATTEMPT_HEADER, ERROR_HEADER, ORIGIN_ROUTING_KEY_HEADER
from gateway.repo.scope import OwnerScope, Statement

State = Literal["parked", "requeued", "all"]
_STATE = {"parked": "d.requeued_at IS NULL", "requeued": "d.requeued_at IS NOT NULL", "all": "TRUE"}
_COLUMNS = """d.id, d.message_id, d.job_id, d.content_id, d.queue, d.routing_key, d.error,
              d.attempts, d.created_at, d.requeued_at,
              (SELECT u.id FROM uploads u
               WHERE u.content_id = d.content_id AND u.job_id = d.job_id
               ORDER BY u.position LIMIT 1) AS upload_id"""
# Headers of the first delivery that a requeued message must not carry again.
_DROPPED_HEADERS = frozenset(
    {ERROR_HEADER, ATTEMPT_HEADER, "x-death", "x-first-death-exchange",
     "x-first-death-queue", "x-first-death-reason", "x-origin-queue"}
)  # fmt: skip


async def list_dead_letters(
    pool: asyncpg.Pool,
    scope: OwnerScope,
    state: State,
    queue: str | None,
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    """The scope's dead letters in a state (of one queue, if given), newest first."""
    q = Statement()
    conditions = [_STATE[state], scope.holds_job(q, "d.job_id")]
    if queue is not None:
        conditions.append(f"d.queue = {q.param(queue)}")
    rows: list[asyncpg.Record] = await pool.fetch(
        f"""SELECT {_COLUMNS} FROM dead_letters d WHERE {" AND ".join(conditions)}
            ORDER BY d.created_at DESC, d.id DESC
            LIMIT {q.param(limit)} OFFSET {q.param(offset)}""",
        *q.args,
    )
    return rows


async def dead_letters_of_job(
    pool: asyncpg.Pool, scope: OwnerScope, job_id: uuid.UUID
) -> list[asyncpg.Record]:
    """Every dead letter of one job of the scope (parked or requeued), with its body and
    the traceback of an unexpected failure."""
    q = Statement()
    rows: list[asyncpg.Record] = await pool.fetch(
        f"""SELECT {_COLUMNS}, d.body, d.traceback FROM dead_letters d
            WHERE d.job_id = {q.param(job_id)} AND {scope.holds_job(q, "d.job_id")}
            ORDER BY d.created_at, d.id""",
        *q.args,
    )
    return rows


async def requeue(
    pool: asyncpg.Pool,
    scope: OwnerScope,
    retry_stage: Callable[[str], str | None],
    *,
    job_id: uuid.UUID | None = None,
    queue: str | None = None,
) -> int:
    """Requeue the scope's parked dead letters (of one job, of one queue, or all) through the
    outbox, setting failed content back to `retry_stage(queue)`; how many were requeued."""
    q = Statement()
    conditions = ["d.requeued_at IS NULL", scope.holds_job(q, "d.job_id")]
    if job_id is not None:
        conditions.append(f"d.job_id = {q.param(job_id)}")
    if queue is not None:
        conditions.append(f"d.queue = {q.param(queue)}")
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"""SELECT d.id, d.message_id, d.queue, d.routing_key, d.body,
                       d.headers::text AS h, d.content_id
                FROM dead_letters d WHERE {" AND ".join(conditions)}
                ORDER BY d.id FOR UPDATE SKIP LOCKED""",
            *q.args,
        )
        for row in rows:
            await _requeue_one(conn, row, retry_stage(row["queue"]))
    return len(rows)


async def _requeue_one(conn: asyncpg.Connection, row: Any, stage: str | None) -> None:
    """Requeue one dead letter that `requeue` selected (and locked) in the scope."""
    headers = {k: v for k, v in orjson.loads(row["h"]).items() if k not in _DROPPED_HEADERS}
    if row["routing_key"]:
        # Sent back to its queue by name: the consumer decodes it by the key it had.
        headers[ORIGIN_ROUTING_KEY_HEADER] = row["routing_key"]
    if stage is not None and row["content_id"] is not None:
        await conn.execute(
            """UPDATE content SET stage = $2, error = NULL, stage_updated_at = now()
               WHERE id = $1 AND stage = 'failed'""",
            row["content_id"],
            stage,
        )
    # A new message id: the outbox keeps one row per message it ever sent. A row the relay
    # parked as unroutable is routed by its key again; any other goes back to its queue.
    await conn.execute(
        """INSERT INTO outbox (message_id, routing_key, queue, body, headers)
           VALUES ($1, $2, $3, $4, $5::text::jsonb)""",
        uuid.uuid4(),
        row["routing_key"] or "",
        None if row["queue"] == OUTBOX_PARKING else row["queue"],
        row["body"],
        orjson.dumps(headers).decode(),
    )
    await conn.execute("UPDATE dead_letters SET requeued_at = now() WHERE id = $1", row["id"])


async def purge(pool: asyncpg.Pool, scope: OwnerScope, job_id: uuid.UUID | None = None) -> int:
    """Forget the scope's parked dead letters, or every dead letter of one job; how many."""
    q = Statement()
    conditions = [scope.holds_job(q, "d.job_id")]
    if job_id is not None:
        conditions.append(f"d.job_id = {q.param(job_id)}")
    else:
        conditions.append("d.requeued_at IS NULL")
    deleted: int = await pool.fetchval(
        f"""WITH gone AS (DELETE FROM dead_letters d WHERE {" AND ".join(conditions)}
                          RETURNING 1)
            SELECT count(*) FROM gone""",
        *q.args,
    )
    return deleted
