"""The analyzer's SQL: read the content and its embedding; store the analysis once (CAS)."""

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
