"""Purging media content that no upload refers to any more (clusterer/purge.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from clusterer.repo.audit import audit
from clusterer.repo.filing import SEARCH_KEY_DRIFT


@dataclass(frozen=True)
class Target:
    """Media content a deletion released, as it was when the purge looked."""

    id: uuid.UUID
    sha256: str
    storage_key: str | None
    thumbnail_key: str | None
    cluster_id: uuid.UUID | None
    frame_keys: tuple[str, ...]
    # (cluster, model) of its standby memberships (a model switch's other model)
    standby: tuple[tuple[uuid.UUID, str], ...] = ()


_TARGET = """
SELECT c.id, c.sha256, c.storage_key, c.thumbnail_key, c.cluster_id,
       coalesce((SELECT array_agg(f.storage_key) FROM video_frames f
                 WHERE f.content_id = c.id AND f.storage_key IS NOT NULL), '{}') AS frame_keys,
       ARRAY(SELECT s.cluster_id::text || ' ' || s.model_id FROM standby_members s
             WHERE s.content_id = c.id ORDER BY s.cluster_id) AS standby
FROM content c WHERE c.id = $1 AND c.kind <> 'json'
"""


async def target(conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID) -> Target | None:
    """The media content to purge; None when there is no such row (or it is JSON)."""
    row = await conn.fetchrow(_TARGET, content_id)
    if row is None:
        return None
    return Target(
        row["id"],
        row["sha256"],
        row["storage_key"],
        row["thumbnail_key"],
        row["cluster_id"],
        tuple(row["frame_keys"]),
        tuple(
            (uuid.UUID(cluster), model)
            for cluster, model in (member.split(" ", 1) for member in row["standby"])
        ),
    )


async def lock_cluster(conn: asyncpg.Connection, cluster_id: uuid.UUID) -> str | None:
    """Lock the cluster's row; its model, or None when it is gone."""
    model: str | None = await conn.fetchval(
        "SELECT model_id FROM clusters WHERE id = $1 FOR UPDATE", cluster_id
    )
    return model


async def lock_content(conn: asyncpg.Connection, content_id: uuid.UUID) -> Target | None:
    """Lock the content's row (after its objects' and its cluster's locks) and read it again."""
    await conn.execute("SELECT FROM content WHERE id = $1 FOR UPDATE", content_id)
    return await target(conn, content_id)


async def referenced(conn: asyncpg.Connection, content_id: uuid.UUID) -> bool:
    """Whether an upload refers to the content (read under its lock: see clusterer/purge.py)."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM uploads WHERE content_id = $1)", content_id
    )
    return found


async def leave_cluster(
    conn: asyncpg.Connection, cluster_id: uuid.UUID, model_id: str, content_id: uuid.UUID
) -> int:
    """Take the content's vector out of its cluster's sum and count (exact, as a join put it
    in); the members left. A cluster left empty is deleted (its open proposals go stale when
    next decided)."""
    left = await conn.fetchval(
        """WITH e AS (
               SELECT (SELECT embedding FROM embeddings
                       WHERE content_id = $3 AND model_id = $2) AS v
           ), s AS (
               SELECT CASE WHEN e.v IS NULL THEN cl.centroid_sum
                           ELSE cl.centroid_sum - e.v END AS total
               FROM clusters cl, e WHERE cl.id = $1
           )
           UPDATE clusters cl
           SET centroid_sum = s.total,
               centroid = CASE WHEN cl.centroid <=> s.total > $4 THEN l2_normalize(s.total)
                               ELSE cl.centroid END,
               member_count = greatest(cl.member_count - 1, 0), updated_at = now()
           FROM s WHERE cl.id = $1
           RETURNING cl.member_count""",
        cluster_id,
        model_id,
        content_id,
        SEARCH_KEY_DRIFT,
    )
    left = int(left or 0)
    if left == 0:
        await conn.execute("DELETE FROM clusters WHERE id = $1", cluster_id)
        await audit(conn, "clusterer", "cluster.delete", "cluster", cluster_id, {"why": "empty"})
    return left


async def delete_content(conn: asyncpg.Connection, item: Target, actor: str) -> None:
    """The row and what hangs on it (embeddings, frames: by cascade), a tombstone, the
    copies' near-duplicate label, an audit row."""
    await conn.execute(
        "UPDATE content SET near_duplicate_of = NULL WHERE near_duplicate_of = $1", item.id
    )
    await conn.execute(
        """WITH d AS (DELETE FROM content WHERE id = $1 RETURNING id, sha256, kind)
           INSERT INTO content_tombstones (content_id, sha256, kind)
           SELECT id, sha256, kind FROM d ON CONFLICT DO NOTHING""",
        item.id,
    )
    await audit(
        conn,
        actor,
        "content.purge",
        "content",
        item.id,
        {"sha256": item.sha256, "cluster_id": str(item.cluster_id) if item.cluster_id else None},
    )
