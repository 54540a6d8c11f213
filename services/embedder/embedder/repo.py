"""The embedder's SQL: read content, find near-duplicates, write its own columns by CAS."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import orjson
from numpy.typing import NDArray

from common.objects import lock_objects, sha_of


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
    thumbnail: bytes = field(repr=False)
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


def _vector(values: NDArray[np.float32]) -> str:
    return "[" + ",".join(f"{float(v):.8g}" for v in values) + "]"


# One statement per image: the nearest pHash saved before (through its HNSW index; LIMIT 1
# ordered by distance is what the index answers), the CAS from `ingested` to `embedded` with
# the facts, and the embedding (and video frames) of the row that advanced. Nothing is
# written when another delivery advanced the row first. Always one row back, so a group of
# these run together lines up with its inputs.
SAVE_STATEMENT = """
WITH nearest AS (
    SELECT coalesce(near_duplicate_of, id) AS original, phash <~> $6::text::bit(64) AS distance
    FROM content
    WHERE phash IS NOT NULL AND id <> $1
    ORDER BY phash <~> $6::text::bit(64)
    LIMIT 1
), advanced AS (
    UPDATE content
    SET stage = 'embedded', stage_updated_at = now(), error = NULL,
        width = $2, height = $3, format = $4, exif = $5::text::jsonb,
        phash = $6::text::bit(64), thumbnail_key = $7, duration_s = $8,
        near_duplicate_of = (SELECT original FROM nearest WHERE distance <= $9)
    WHERE id = $1 AND stage = 'ingested'
    RETURNING id, near_duplicate_of
), embedding AS (
    INSERT INTO embeddings (content_id, model_id, embedding)
    SELECT id, $10, $11::vector FROM advanced
    ON CONFLICT DO NOTHING
), frames AS (
    INSERT INTO video_frames (content_id, frame_index, timestamp_s, model_id, embedding)
    SELECT advanced.id, frame.index - 1, frame.seconds, $10, frame.embedding::vector
    FROM advanced,
         unnest($12::float8[], $13::text[]) WITH ORDINALITY
             AS frame(seconds, embedding, index)
    ON CONFLICT DO NOTHING
)
SELECT EXISTS (SELECT FROM advanced) AS advanced,
       (SELECT near_duplicate_of FROM advanced) AS near_duplicate_of
"""
# Saves take this lock for their transaction (every embedder replica shares it), so two
# copies saved at the same moment cannot each miss the other: the second sees the first.
NEAR_DUPLICATE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('mammothbox.phash', 0))"


@dataclass(frozen=True)
class Saved:
    advanced: bool  # False: another delivery had already moved the content on
    near_duplicate_of: uuid.UUID | None  # the original this content nearly duplicates


def _save_args(result: Embedded, max_distance: int) -> tuple[Any, ...]:
    return (
        result.content_id,
        result.width,
        result.height,
        result.format,
        orjson.dumps(result.exif).decode(),
        result.phash,
        result.thumbnail_key,
        result.duration_s,
        max_distance,
        result.model_id,
        result.embedding,
        [seconds for seconds, _ in result.frames],
        [_vector(vector) for _, vector in result.frames],  # no codec for vector[]
    )


async def save_many(
    conn: asyncpg.Connection,
    results: Sequence[Embedded],
    max_distance: int,
    keep_thumbnails: Callable[[list[Embedded]], Awaitable[None]],
) -> list[Saved]:
    """For each result in order, in one transaction under the pHash lock: label it a
    near-duplicate (pHash within `max_distance` of content saved before, including earlier
    ones in this group), write its embedding and facts, advance ingested -> embedded.

    The thumbnails' object locks are held too, and `keep_thumbnails` is called with the
    results that advanced before the commit: a purge of other content that shared a
    thumbnail may have removed it since it was stored (common/objects.py); it is put back
    under the lock, so the committed row never names a missing thumbnail."""
    async with conn.transaction():
        await conn.execute(NEAR_DUPLICATE_LOCK)
        await lock_objects(conn, [sha_of(result.thumbnail_key) for result in results])
        rows = await conn.fetchmany(
            SAVE_STATEMENT, [_save_args(result, max_distance) for result in results]
        )
        await keep_thumbnails(
            [result for result, row in zip(results, rows, strict=True) if row["advanced"]]
        )
    return [Saved(row["advanced"], row["near_duplicate_of"]) for row in rows]


async def fail(conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID, error: str) -> None:
    """Record a permanent failure on content still waiting for the embedder."""
    await conn.execute(
        """UPDATE content SET stage = 'failed', error = $2, stage_updated_at = now()
           WHERE id = $1 AND stage = 'ingested'""",
        content_id,
        error[:2000],
    )
