"""The analyzer's SQL: content and embedding read, analysis stored once (CAS), the VLM window."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np
import orjson
from numpy.typing import NDArray

from common.vectors import as_array


@dataclass(frozen=True)
class ContentToAnalyse:
    id: uuid.UUID
    kind: str
    stage: str
    storage_key: str | None
    thumbnail_key: str | None
    analysis: dict[str, Any] | None
    analysis_model: str | None
    analyzed_at: datetime | None
    embedding: NDArray[np.float32] | None


async def content(
    pool: asyncpg.Pool, content_id: uuid.UUID, model_id: str
) -> ContentToAnalyse | None:
    row = await pool.fetchrow(
        """SELECT c.id, c.kind, c.stage, c.storage_key, c.thumbnail_key, c.analysis,
                  c.analysis_model, c.analyzed_at, e.embedding
           FROM content c
           LEFT JOIN embeddings e ON e.content_id = c.id AND e.model_id = $2
           WHERE c.id = $1""",
        content_id,
        model_id,
    )
    if row is None:
        return None
    values = dict(row)
    values["embedding"] = as_array(values["embedding"])
    return ContentToAnalyse(**values)


async def save(
    pool: asyncpg.Pool, content_id: uuid.UUID, analysis: dict[str, Any], model: str
) -> bool:
    """Store the analysis and its tags unless one is stored already; False if it was."""
    tags = [str(t) for t in analysis.get("tags") or []]
    stored = await pool.fetchval(
        """UPDATE content SET analysis = $2::text::jsonb, analysis_model = $3,
                              analyzed_at = now(), tags = $4
           WHERE id = $1 AND analyzed_at IS NULL RETURNING 1""",
        content_id,
        orjson.dumps(analysis).decode(),
        model,
        tags,
    )
    return bool(stored)


# The VLM rate limit's sliding window (see ratelimit.py): every statement below runs in the
# limiter's one short transaction, after `lock_vlm_window`.


async def lock_vlm_window(conn: asyncpg.Connection) -> None:
    """Take the window's lock for this transaction (every analyzer replica shares it)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('mammothbox.vlm-rate', 0))")


async def forget_vlm_calls(conn: asyncpg.Connection, window_s: float) -> None:
    """Delete the calls that have left the window."""
    await conn.execute(
        "DELETE FROM vlm_calls WHERE at < clock_timestamp() - make_interval(secs => $1)",
        window_s,
    )


async def vlm_window(conn: asyncpg.Connection, window_s: float) -> tuple[int, float | None]:
    """The calls in the window and the seconds until the oldest leaves it (None if none)."""
    row = await conn.fetchrow(
        """SELECT count(*) AS calls,
                  extract(epoch FROM min(at) + make_interval(secs => $1)
                                     - clock_timestamp()) AS wait
           FROM vlm_calls""",
        window_s,
    )
    assert row is not None
    wait = row["wait"]
    return int(row["calls"]), None if wait is None else float(wait)


async def record_vlm_call(conn: asyncpg.Connection) -> None:
    """Count one call in the window, now."""
    await conn.execute("INSERT INTO vlm_calls DEFAULT VALUES")
