"""A model switch's flip and drop in SQL (clusterer/switching.py runs them in one transaction)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from common.vectors import index_name


async def record(
    conn: asyncpg.Connection,
    switch_id: uuid.UUID,
    status: str,
    report: dict[str, Any],
    actor: str,
    action: str,
    model_id: str,
    details: dict[str, Any],
) -> None:
    """The switch's new status (flipped_at or finished_at now), its report, the audit row."""
    timestamp = "flipped_at" if status == "flipped" else "finished_at"
    await conn.execute(
        f"""UPDATE model_switches SET status = $2, {timestamp} = now(),
                   report = report || $3::text::jsonb
            WHERE id = $1""",
        switch_id,
        status,
        orjson.dumps(report).decode(),
    )
    await conn.execute(
        """INSERT INTO audit_log (actor, action, entity, entity_id, details)
           VALUES ($1, $2, 'model', $3, $4::text::jsonb)""",
        actor,
        action,
        model_id,
        orjson.dumps(details).decode(),
    )


async def overlaps(conn: asyncpg.Connection, new_model: str) -> list[asyncpg.Record]:
    """(old, new, n): how many members of each active cluster the next model's standby
    cluster `new` holds."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT c.cluster_id AS old, s.cluster_id AS new, count(*)::int AS n
           FROM content c
           JOIN standby_members s ON s.content_id = c.id AND s.model_id = $1
           WHERE c.cluster_id IS NOT NULL
           GROUP BY 1, 2""",
        new_model,
    )
    return rows


async def clusters_of(conn: asyncpg.Connection, model_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, name, name_source, provisional, member_count FROM clusters
           WHERE model_id = $1 FOR UPDATE""",
        model_id,
    )
    return rows


async def set_names(
    conn: asyncpg.Connection, names: dict[uuid.UUID, str], carried: dict[uuid.UUID, str]
) -> None:
    """Give clusters their names (through temporary ones, so no two collide on the way);
    those in `carried` take their old cluster's confirmation and name source too."""
    await conn.executemany(
        "UPDATE clusters SET name = '~' || id::text WHERE id = $1", [(c,) for c in names]
    )
    await conn.executemany(
        "UPDATE clusters SET name = $2, updated_at = now() WHERE id = $1", list(names.items())
    )
    await conn.executemany(
        """UPDATE clusters SET provisional = false, name_source = $2, updated_at = now()
           WHERE id = $1""",
        list(carried.items()),
    )


async def swap_memberships(
    conn: asyncpg.Connection, old_model: str, new_model: str
) -> list[asyncpg.Record]:
    """The active model's memberships go aside (standby), the next model's take their place;
    media content the next model has not filed yet is taken out of its cluster to be filed
    again (its rows: id, first_job_id, kind, near_duplicate_of)."""
    await conn.execute(
        """INSERT INTO standby_members (content_id, model_id, cluster_id)
           SELECT c.id, $1, c.cluster_id FROM content c
           JOIN clusters cl ON cl.id = c.cluster_id AND cl.model_id = $1
           ON CONFLICT DO NOTHING""",
        old_model,
    )
    unfiled: list[asyncpg.Record] = await conn.fetch(
        """UPDATE content c SET cluster_id = NULL, stage = 'embedded', stage_updated_at = now()
           WHERE c.kind <> 'json' AND c.stage IN ('embedded', 'clustered')
             AND NOT EXISTS (SELECT FROM standby_members s
                             WHERE s.content_id = c.id AND s.model_id = $1)
           RETURNING c.id, c.first_job_id, c.kind, c.near_duplicate_of""",
        new_model,
    )
    await conn.execute(
        """UPDATE content c SET cluster_id = s.cluster_id, stage = 'clustered',
                                stage_updated_at = now(), error = NULL
           FROM standby_members s
           WHERE s.model_id = $1 AND s.content_id = c.id
             AND c.stage IN ('embedded', 'clustered')""",
        new_model,
    )
    await conn.execute("DELETE FROM standby_members WHERE model_id = $1", new_model)
    await conn.execute("UPDATE models SET active = false WHERE id = $1", old_model)
    await conn.execute("UPDATE models SET active = true WHERE id = $1", new_model)
    return unfiled


async def remove_model_data(
    conn: asyncpg.Connection, model_id: str, *, retire: bool
) -> dict[str, int]:
    """A model's vectors, frames, clusters (their proposals and runs) and standby
    memberships; with `retire`, the model is marked so no embedder runs it again. The row is
    locked first, so an embedder's save in progress finishes before (and one after sees it)."""
    await conn.execute(
        "UPDATE models SET retired_at = CASE WHEN $2 THEN now() END, active = false WHERE id = $1",
        model_id,
        retire,
    )
    await conn.execute("DELETE FROM standby_members WHERE model_id = $1", model_id)
    await conn.execute(
        """UPDATE content SET cluster_id = NULL
           WHERE cluster_id IN (SELECT id FROM clusters WHERE model_id = $1)""",
        model_id,
    )
    await conn.execute("DELETE FROM cluster_proposals WHERE model_id = $1", model_id)
    await conn.execute("DELETE FROM recluster_runs WHERE model_id = $1", model_id)
    clusters = await conn.fetchval(
        "WITH d AS (DELETE FROM clusters WHERE model_id = $1 RETURNING 1) SELECT count(*) FROM d",
        model_id,
    )
    await conn.execute("DELETE FROM video_frames WHERE model_id = $1", model_id)
    vectors = await conn.fetchval(
        "WITH d AS (DELETE FROM embeddings WHERE model_id = $1 RETURNING 1) SELECT count(*) FROM d",
        model_id,
    )
    return {"clusters": int(clusters), "vectors": int(vectors)}


async def drop_indexes(pool: asyncpg.Pool, model_id: str) -> None:
    """The model's HNSW indexes, each in a transaction of its own (a brief exclusive lock)."""
    for table in ("embeddings", "clusters"):
        await pool.execute(f"DROP INDEX IF EXISTS {index_name(table, model_id)}")
