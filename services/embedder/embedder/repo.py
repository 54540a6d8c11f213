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

from common.model_switch import STANDBY_MODEL
from common.objects import lock_objects, sha_of


@dataclass(frozen=True)
class ContentRow:
    id: uuid.UUID
    kind: str
    stage: str
    storage_key: str | None
    near_duplicate_of: uuid.UUID | None


@dataclass(frozen=True, eq=False)
class Vectors:
    """One model's vectors of one content: its embedding, and a video's frames'."""

    model_id: str
    embedding: NDArray[np.float32]
    frames: tuple[tuple[float, NDArray[np.float32]], ...] = ()


@dataclass(frozen=True)
class Embedded:
    """What the embedder learnt about one piece of content (by each model it holds)."""

    content_id: uuid.UUID
    vectors: tuple[Vectors, ...]
    width: int
    height: int
    format: str
    exif: dict[str, Any]
    phash: str  # 64 characters of 0/1
    thumbnail_key: str
    thumbnail: bytes = field(repr=False)
    duration_s: float | None = None


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
# the facts, and the embeddings (and video frames) of each model, of the row that advanced.
# Nothing is written when another delivery advanced the row first, nor for a model retired
# meanwhile (its row is share-locked, so a drop in progress is waited for and then seen).
# Always one row back, so a group of these run together lines up with its inputs; with the
# models saved, and the switch's standby model (whose events go to its own queue).
SAVE_STATEMENT = (
    """
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
), live AS (
    SELECT id FROM models WHERE id = ANY($10::text[]) AND retired_at IS NULL FOR SHARE
), embedding AS (
    INSERT INTO embeddings (content_id, model_id, embedding)
    SELECT advanced.id, m.model_id, m.embedding::vector
    FROM advanced, unnest($10::text[], $11::text[]) AS m(model_id, embedding)
    WHERE m.model_id IN (SELECT id FROM live)
    ON CONFLICT DO NOTHING
), frames AS (
    INSERT INTO video_frames (content_id, model_id, frame_index, timestamp_s, embedding)
    SELECT advanced.id, f.model_id, f.frame_index, f.seconds, f.embedding::vector
    FROM advanced,
         unnest($12::text[], $13::int[], $14::float8[], $15::text[])
             AS f(model_id, frame_index, seconds, embedding)
    WHERE f.model_id IN (SELECT id FROM live)
    ON CONFLICT DO NOTHING
)
SELECT EXISTS (SELECT FROM advanced) AS advanced,
       (SELECT near_duplicate_of FROM advanced) AS near_duplicate_of,
       ARRAY(SELECT id FROM live ORDER BY id) AS models,
       ("""
    + STANDBY_MODEL
    + """) AS standby_model
"""
)
# Saves take this lock for their transaction (every embedder replica shares it), so two
# copies saved at the same moment cannot each miss the other: the second sees the first.
NEAR_DUPLICATE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('mammothbox.phash', 0))"


@dataclass(frozen=True)
class Saved:
    advanced: bool  # False: another delivery had already moved the content on
    near_duplicate_of: uuid.UUID | None  # the original this content nearly duplicates
    models: tuple[str, ...] = ()  # whose vectors were saved (none retired)
    standby_model: str | None = None  # a live switch's model that is not the active one


def _frame_args(vectors: Sequence[Vectors]) -> tuple[list[Any], ...]:
    """(model ids, frame indexes, seconds, vector texts) of every model's frames."""
    frames = [
        (v.model_id, index, seconds, _vector(vector))
        for v in vectors
        for index, (seconds, vector) in enumerate(v.frames)
    ]
    return tuple(list(column) for column in zip(*frames, strict=True)) if frames else ([],) * 4


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
        [v.model_id for v in result.vectors],
        [_vector(v.embedding) for v in result.vectors],  # no codec for vector[]
        *_frame_args(result.vectors),
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
    return [
        Saved(row["advanced"], row["near_duplicate_of"], tuple(row["models"]), row["standby_model"])
        for row in rows
    ]


async def fail(conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID, error: str) -> None:
    """Record a permanent failure on content still waiting for the embedder."""
    await conn.execute(
        """UPDATE content SET stage = 'failed', error = $2, stage_updated_at = now()
           WHERE id = $1 AND stage = 'ingested'""",
        content_id,
        error[:2000],
    )


async def embedded_models(
    conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID
) -> tuple[list[str], str | None]:
    """The models the content has vectors of, and the live switch's standby model."""
    row = await conn.fetchrow(
        """SELECT ARRAY(SELECT model_id FROM embeddings WHERE content_id = $1 ORDER BY model_id)
                  AS models, ("""
        + STANDBY_MODEL
        + """) AS standby_model""",
        content_id,
    )
    assert row is not None
    return list(row["models"]), row["standby_model"]


@dataclass(frozen=True)
class Missing:
    """Stored media content a model has no vector of yet (the backfill's work)."""

    id: uuid.UUID
    kind: str
    storage_key: str


_MISSING = (
    "c.kind <> 'json' AND c.stage IN ('embedded', 'clustered') AND c.id <> ALL($2::uuid[])"
    + (" AND NOT EXISTS (SELECT FROM embeddings e WHERE e.content_id = c.id AND e.model_id = $1)")
)


async def missing(
    conn: asyncpg.Connection,
    model_id: str,
    after: uuid.UUID | None,
    limit: int,
    skipped: list[uuid.UUID],
) -> list[Missing]:
    """The next `limit` content by id after `after` without the model's vector."""
    rows = await conn.fetch(
        f"""SELECT c.id, c.kind, c.storage_key FROM content c
            WHERE {_MISSING} AND ($3::uuid IS NULL OR c.id > $3) AND c.storage_key IS NOT NULL
            ORDER BY c.id LIMIT $4""",
        model_id,
        skipped,
        after,
        limit,
    )
    return [Missing(**dict(r)) for r in rows]


async def missing_count(conn: asyncpg.Connection, model_id: str, skipped: list[uuid.UUID]) -> int:
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM content c WHERE {_MISSING}", model_id, skipped
    )
    return count


@dataclass(frozen=True)
class Backfilled:
    job_id: uuid.UUID
    near_duplicate_of: uuid.UUID | None
    standby_model: str | None


# The content is key-share locked, so a purge waits for this to commit (and then removes the
# vector with the row), and the model share-locked, so a drop does too.
_SAVE_BACKFILLED = (
    """
WITH c AS (
    SELECT id, first_job_id, near_duplicate_of FROM content
    WHERE id = $1 AND stage IN ('embedded', 'clustered') FOR KEY SHARE
), live AS (
    SELECT id FROM models WHERE id = $2 AND retired_at IS NULL FOR SHARE
), embedding AS (
    INSERT INTO embeddings (content_id, model_id, embedding)
    SELECT c.id, live.id, $3::text::vector FROM c, live
    ON CONFLICT DO NOTHING
), frames AS (
    INSERT INTO video_frames (content_id, model_id, frame_index, timestamp_s, embedding)
    SELECT c.id, live.id, f.frame_index, f.seconds, f.embedding::vector
    FROM c, live,
         unnest($4::text[], $5::int[], $6::float8[], $7::text[])
             AS f(model_id, frame_index, seconds, embedding)
    ON CONFLICT DO NOTHING
)
SELECT c.first_job_id, c.near_duplicate_of, ("""
    + STANDBY_MODEL
    + """) AS standby_model
FROM c, live
"""
)


async def save_backfilled(
    conn: asyncpg.Connection, content_id: uuid.UUID, vectors: Vectors
) -> Backfilled | None:
    """Save a model's vectors of stored content; None when the content or model is gone."""
    row = await conn.fetchrow(
        _SAVE_BACKFILLED,
        content_id,
        vectors.model_id,
        _vector(vectors.embedding),
        *_frame_args([vectors]),
    )
    if row is None:
        return None
    return Backfilled(row["first_job_id"], row["near_duplicate_of"], row["standby_model"])


# One embedder at a time backfills (a session lock, held on its own connection).
BACKFILL_LOCK = "mammothbox.model-backfill"


async def try_backfill_lock(conn: asyncpg.Connection) -> bool:
    taken: bool = await conn.fetchval(
        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", BACKFILL_LOCK
    )
    return taken


async def backfill_unlock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", BACKFILL_LOCK)
