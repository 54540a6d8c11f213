"""The admin commands' statements, run in the command's transaction; the clusters' counts."""

from __future__ import annotations

import uuid

import asyncpg

from common.clusters import CLUSTER_COLUMNS


async def lock_clusters(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """Lock these clusters in id order (one order: concurrent commands never deadlock).

    Each row: id, model_id, threshold, member_count; unknown ids are left out.
    """
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, model_id, threshold, member_count FROM clusters"
        " WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
        ids,
    )
    return rows


async def cluster_row(conn: asyncpg.Connection, cluster_id: uuid.UUID) -> asyncpg.Record | None:
    """The cluster's columns as `cluster_json` reads them; None if it is gone."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = $1", cluster_id
    )
    return row


async def confirm(conn: asyncpg.Connection, cluster_id: uuid.UUID) -> None:
    """The cluster is provisional no more."""
    await conn.execute(
        "UPDATE clusters SET provisional = false, updated_at = now() WHERE id = $1", cluster_id
    )


async def set_threshold(conn: asyncpg.Connection, cluster_id: uuid.UUID, threshold: float) -> None:
    """Store the cluster's own threshold (the table refuses one outside (0, 1])."""
    await conn.execute(
        "UPDATE clusters SET threshold = $2, updated_at = now() WHERE id = $1",
        cluster_id,
        threshold,
    )


async def members_below(
    conn: asyncpg.Connection, cluster_id: uuid.UUID, model_id: str, threshold: float
) -> list[uuid.UUID]:
    """Members less similar than `threshold` to the cluster's current centroid."""
    rows = await conn.fetch(
        """SELECT c.id FROM content c
           JOIN embeddings e ON e.content_id = c.id AND e.model_id = $2
           JOIN clusters cl ON cl.id = c.cluster_id
           WHERE c.cluster_id = $1 AND 1 - (e.embedding <=> cl.centroid_sum) < $3""",
        cluster_id,
        model_id,
        threshold,
    )
    return [r["id"] for r in rows]


async def members(conn: asyncpg.Connection, cluster_id: uuid.UUID) -> list[uuid.UUID]:
    """Every content filed in the cluster."""
    rows = await conn.fetch("SELECT id FROM content WHERE cluster_id = $1", cluster_id)
    return [r["id"] for r in rows]


async def recompute_centroid(conn: asyncpg.Connection, cluster_id: uuid.UUID, model_id: str) -> int:
    """Centroid and count from the members' embeddings; the member count (0: none left)."""
    row = await conn.fetchrow(
        """WITH m AS (
               SELECT sum(e.embedding) AS total, count(*) AS n
               FROM content c JOIN embeddings e ON e.content_id = c.id AND e.model_id = $2
               WHERE c.cluster_id = $1
           )
           UPDATE clusters SET centroid_sum = m.total, centroid = l2_normalize(m.total),
                               member_count = m.n, updated_at = now()
           FROM m WHERE clusters.id = $1
           RETURNING member_count""",
        cluster_id,
        model_id,
    )
    return int(row["member_count"]) if row else 0


async def delete_clusters(conn: asyncpg.Connection, cluster_ids: list[uuid.UUID]) -> None:
    """Delete these clusters (their members must have moved or been unfiled first)."""
    await conn.execute("DELETE FROM clusters WHERE id = ANY($1::uuid[])", cluster_ids)


async def unfile(conn: asyncpg.Connection, content_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """Take filed content out of its cluster, back to `embedded`.

    Each row (one per content that was filed): id, first_job_id, kind, near_duplicate_of.
    """
    rows: list[asyncpg.Record] = await conn.fetch(
        """UPDATE content SET cluster_id = NULL, stage = 'embedded', stage_updated_at = now()
           WHERE id = ANY($1::uuid[]) AND stage = 'clustered'
           RETURNING id, first_job_id, kind, near_duplicate_of""",
        content_ids,
    )
    return rows


async def move_members(
    conn: asyncpg.Connection, target_id: uuid.UUID, source_ids: list[uuid.UUID]
) -> int:
    """Move every member of the sources into the target; how many moved."""
    moved = await conn.fetchval(
        """WITH m AS (UPDATE content SET cluster_id = $1 WHERE cluster_id = ANY($2::uuid[])
                      RETURNING 1)
           SELECT count(*) FROM m""",
        target_id,
        source_ids,
    )
    return int(moved)


async def cluster_counts(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Clusters counted by model and provisional (rows: model_id, provisional, n)."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT model_id, provisional, count(*) AS n FROM clusters GROUP BY 1, 2"
    )
    return rows
