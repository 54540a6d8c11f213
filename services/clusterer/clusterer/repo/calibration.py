"""A model's calibration: how many items it holds, a random sample of them, the result."""

from __future__ import annotations

from typing import Any

import asyncpg
import numpy as np
import orjson
from numpy.typing import NDArray

from common.vectors import unit_rows

# Items are embeddings of content that is not a near-duplicate of other content.
_ITEMS = """FROM embeddings e JOIN content c ON c.id = e.content_id
            WHERE e.model_id = $1 AND c.near_duplicate_of IS NULL"""


async def item_count(conn: asyncpg.Connection | asyncpg.Pool, model_id: str) -> int:
    """Items of the model: its embeddings, near-duplicates left out."""
    return int(await conn.fetchval(f"SELECT count(*) {_ITEMS}", model_id))


async def sample(
    conn: asyncpg.Connection | asyncpg.Pool, model_id: str, size: int
) -> NDArray[np.float32]:
    """Up to `size` of the model's items, drawn at random, as rows of unit vectors.

    The draw sorts the model's rows by a random key without reading their vectors (the
    vector column is fetched, out of line, for the rows kept only).
    """
    rows = await conn.fetch(
        f"""SELECT e2.embedding FROM (SELECT e.content_id {_ITEMS} ORDER BY random() LIMIT $2) s
            JOIN embeddings e2 ON e2.content_id = s.content_id AND e2.model_id = $1""",
        model_id,
        size,
    )
    return unit_rows([r["embedding"] for r in rows])


async def store(
    conn: asyncpg.Connection | asyncpg.Pool,
    model_id: str,
    threshold: float,
    linkage: float,
    details: dict[str, Any],
) -> None:
    """Record the model's calibrated thresholds and how they came about."""
    await conn.execute(
        """UPDATE models SET calibrated_threshold = $2, linkage_threshold = $3,
                             calibration = $4::text::jsonb, calibrated_at = now()
           WHERE id = $1""",
        model_id,
        threshold,
        linkage,
        orjson.dumps(details).decode(),
    )
