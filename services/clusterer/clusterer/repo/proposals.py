"""Re-clustering runs and their proposals: what a run reads, records, and accepting needs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import numpy as np
import orjson
from numpy.typing import NDArray

from clusterer.recluster import Current, Item, Proposal
from common.clusters import PROPOSAL_COLUMNS, proposal_json
from common.model_switch import STANDBY_MODEL
from common.vectors import unit_rows


async def models_with_clusters(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Each model that has clusters, with its filed items now and at its last finished run
    (rows: model_id, items, last_items; last_items NULL before the first run)."""
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT m.id AS model_id,
                  (SELECT coalesce(sum(member_count), 0) FROM clusters
                   WHERE model_id = m.id)::int AS items,
                  (SELECT items FROM recluster_runs r
                   WHERE r.model_id = m.id AND r.status = 'done'
                   ORDER BY started_at DESC LIMIT 1) AS last_items
           FROM models m WHERE EXISTS (SELECT 1 FROM clusters WHERE model_id = m.id)
             AND m.retired_at IS NULL
             -- a model switch's standby clusters are not shown to anyone: nothing to propose
             AND m.id IS DISTINCT FROM ("""
        + STANDBY_MODEL
        + """)"""
    )
    return rows


async def try_lock_model(conn: asyncpg.Connection, model_id: str) -> bool:
    """One run per model at a time, across replicas (held until the connection lets go)."""
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended('mammothbox.recluster:' || $1, 0))",
            model_id,
        )
    )


async def unlock_model(conn: asyncpg.Connection, model_id: str) -> None:
    await conn.execute(
        "SELECT pg_advisory_unlock(hashtextextended('mammothbox.recluster:' || $1, 0))", model_id
    )


async def start_run(
    conn: asyncpg.Connection | asyncpg.Pool, run_id: uuid.UUID, model_id: str, actor: str
) -> None:
    """Record a run; a run of the model still marked running was cut short (the caller holds
    the model's lock, so none is running now)."""
    await conn.execute(
        """UPDATE recluster_runs SET status = 'failed', finished_at = clock_timestamp(),
                  error = 'interrupted (the clusterer stopped during the run)'
           WHERE model_id = $1 AND status = 'running'""",
        model_id,
    )
    await conn.execute(
        "INSERT INTO recluster_runs (id, model_id, requested_by) VALUES ($1, $2, $3)",
        run_id,
        model_id,
        actor,
    )


async def end_run(
    conn: asyncpg.Connection | asyncpg.Pool,
    run_id: uuid.UUID,
    *,
    status: str,
    seconds: float,
    items: int | None = None,
    clusters: int | None = None,
    regions: int | None = None,
    linkage: float | None = None,
    proposed: int | None = None,
    error: str | None = None,
) -> None:
    await conn.execute(
        """UPDATE recluster_runs SET status = $2, finished_at = clock_timestamp(), seconds = $3,
                  items = $4, clusters = $5, regions = $6, linkage_threshold = $7,
                  proposed = $8, error = $9
           WHERE id = $1""",
        run_id,
        status,
        seconds,
        items,
        clusters,
        regions,
        linkage,
        proposed,
        error,
    )


async def filed_items(
    conn: asyncpg.Connection, model_id: str
) -> tuple[list[Item], NDArray[np.float32]]:
    """Every filed content of the model with its cluster and embedding, in content id order."""
    rows = await conn.fetch(
        """SELECT c.id, c.cluster_id, e.embedding FROM clusters cl
           JOIN content c ON c.cluster_id = cl.id
           JOIN embeddings e ON e.content_id = c.id AND e.model_id = cl.model_id
           WHERE cl.model_id = $1 ORDER BY c.id""",
        model_id,
    )
    items = [Item(r["id"], r["cluster_id"]) for r in rows]
    return items, unit_rows([r["embedding"] for r in rows])


async def current_clusters(conn: asyncpg.Connection, model_id: str) -> dict[uuid.UUID, Current]:
    rows = await conn.fetch(
        "SELECT id, provisional, member_count FROM clusters WHERE model_id = $1", model_id
    )
    return {r["id"]: Current(r["id"], r["provisional"], r["member_count"]) for r in rows}


async def linkage_threshold(conn: asyncpg.Connection, model_id: str) -> float | None:
    value = await conn.fetchval("SELECT linkage_threshold FROM models WHERE id = $1", model_id)
    return float(value) if value is not None else None


async def record(
    conn: asyncpg.Connection, run_id: uuid.UUID, model_id: str, proposals: Sequence[Proposal]
) -> list[tuple[uuid.UUID, Proposal]]:
    """Store what is new; open proposals of the model not found again become stale.

    An open or dismissed proposal found again adds nothing (its fingerprint is taken): a
    second run over the same clusters proposes nothing new, and a dismissal sticks.
    """
    fingerprints = [p.fingerprint for p in proposals]
    await conn.execute(
        """UPDATE cluster_proposals SET status = 'stale', decided_at = now(),
                  decided_by = 'recluster'
           WHERE model_id = $1 AND status = 'open' AND NOT fingerprint = ANY($2::text[])""",
        model_id,
        fingerprints,
    )
    added: list[tuple[uuid.UUID, Proposal]] = []
    for p in proposals:
        proposal_id = await conn.fetchval(
            """INSERT INTO cluster_proposals (id, run_id, model_id, kind, cluster_ids, plan,
                                              reason, gain, fingerprint)
               VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9)
               ON CONFLICT (fingerprint) WHERE status IN ('open', 'dismissed') DO NOTHING
               RETURNING id""",
            uuid.uuid4(),
            run_id,
            model_id,
            p.kind,
            list(p.cluster_ids),
            orjson.dumps(p.plan).decode(),
            p.reason,
            p.gain,
            p.fingerprint,
        )
        if proposal_id is not None:
            added.append((proposal_id, p))
    return added


async def lock_proposal(conn: asyncpg.Connection, proposal_id: uuid.UUID) -> dict[str, Any] | None:
    """The proposal, locked for a decision (plan as a dict); None if there is none."""
    row = await conn.fetchrow(
        f"SELECT {PROPOSAL_COLUMNS} FROM cluster_proposals WHERE id = $1 FOR UPDATE", proposal_id
    )
    return proposal_json(row) if row else None


async def decide(
    conn: asyncpg.Connection, proposal_id: uuid.UUID, status: str, actor: str
) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""UPDATE cluster_proposals SET status = $2, decided_at = now(), decided_by = $3
            WHERE id = $1 RETURNING {PROPOSAL_COLUMNS}""",
        proposal_id,
        status,
        actor,
    )
    assert row is not None
    return proposal_json(row)


async def move_listed(
    conn: asyncpg.Connection, members: list[uuid.UUID], source: uuid.UUID, target: uuid.UUID
) -> int:
    """Move these members, those still in `source`, to `target`; how many moved."""
    moved = await conn.fetchval(
        """WITH m AS (UPDATE content SET cluster_id = $3
                      WHERE id = ANY($1::uuid[]) AND cluster_id = $2 RETURNING 1)
           SELECT count(*) FROM m""",
        members,
        source,
        target,
    )
    return int(moved)


async def create_empty(
    conn: asyncpg.Connection, cluster_id: uuid.UUID, model_id: str, name: str
) -> None:
    """A provisional cluster without members yet (a split's new part; its centroid follows)."""
    await conn.execute(
        """INSERT INTO clusters (id, model_id, name, name_source, provisional, member_count)
           VALUES ($1, $2, $3, 'placeholder', true, 0)""",
        cluster_id,
        model_id,
        name,
    )


async def cluster_name(conn: asyncpg.Connection, cluster_id: uuid.UUID) -> str:
    return str(await conn.fetchval("SELECT name FROM clusters WHERE id = $1", cluster_id))
