"""The embedder's SQL: read content, find near-duplicates, write its own columns by CAS."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import orjson
from numpy.typing import NDArray


@dataclass(frozen=True)
class ContentRow:
    id: uuid.UUID
    kind: str
    stage: str
    storage_key: str | None
    near_duplicate_of: uuid.UUID | None


@dataclass(frozen=True)
class Embedded:
    """What the embedder learnt about one piece of content."""

    content_id: uuid.UUID
    model_id: str
    dim: int
    embedding: NDArray[np.float32]
    width: int
    height: int
    format: str
    exif: dict[str, Any]
    phash: str  # 64 characters of 0/1
    thumbnail_key: str
    duration_s: float | None = None
    frames: tuple[tuple[float, NDArray[np.float32]], ...] = ()


async def content(
    conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID
) -> ContentRow | None:
    row = await conn.fetchrow(
        "SELECT id, kind, stage, storage_key, near_duplicate_of FROM content WHERE id = $1",
        content_id,
    )
    return ContentRow(**dict(row)) if row is not None else None


async def near_duplicate(
    conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID, phash: str, max_distance: int
) -> uuid.UUID | None:
    """The original this content nearly duplicates, found through the pHash HNSW index."""
    row = await conn.fetchrow(
        """SELECT id, near_duplicate_of, phash <~> $2::text::bit(64) AS distance
           FROM content
           WHERE phash IS NOT NULL AND id <> $1
           ORDER BY phash <~> $2::text::bit(64)
           LIMIT 1""",
        content_id,
        phash,
    )
    if row is None or row["distance"] > max_distance:
        return None
    # Point at the original, never at another copy.
    original: uuid.UUID = row["near_duplicate_of"] or row["id"]
    return original


def _vector(values: NDArray[np.float32]) -> str:
    return "[" + ",".join(f"{float(v):.8g}" for v in values) + "]"


async def save(conn: asyncpg.Connection, result: Embedded, near: uuid.UUID | None) -> bool:
    """Write the embedding and facts and advance ingested -> embedded; False if already done."""
    async with conn.transaction():
        advanced = await conn.fetchval(
            """UPDATE content
               SET stage = 'embedded', stage_updated_at = now(), error = NULL,
                   width = $2, height = $3, format = $4, exif = $5::text::jsonb,
                   phash = $6::text::bit(64), thumbnail_key = $7, duration_s = $8,
                   near_duplicate_of = $9
               WHERE id = $1 AND stage = 'ingested'
               RETURNING 1""",
            result.content_id,
            result.width,
            result.height,
            result.format,
            orjson.dumps(result.exif).decode(),
            result.phash,
            result.thumbnail_key,
            result.duration_s,
            near,
        )
        if not advanced:
            return False
        await conn.execute(
            """INSERT INTO embeddings (content_id, model_id, embedding)
               VALUES ($1, $2, $3::text::vector) ON CONFLICT DO NOTHING""",
            result.content_id,
            result.model_id,
            _vector(result.embedding),
        )
        if result.frames:
            await conn.executemany(
                """INSERT INTO video_frames (content_id, frame_index, timestamp_s, model_id,
                                             embedding)
                   VALUES ($1, $2, $3, $4, $5::text::vector) ON CONFLICT DO NOTHING""",
                [
                    (result.content_id, i, ts, result.model_id, _vector(vec))
                    for i, (ts, vec) in enumerate(result.frames)
                ],
            )
    return True


async def fail(conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID, error: str) -> None:
    """Record a permanent failure on content still waiting for the embedder."""
    await conn.execute(
        """UPDATE content SET stage = 'failed', error = $2, stage_updated_at = now()
           WHERE id = $1 AND stage = 'ingested'""",
        content_id,
        error[:2000],
    )
