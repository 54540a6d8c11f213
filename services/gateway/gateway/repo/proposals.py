"""Re-clustering proposals and runs, as an unbound admin key sees them (every owner's)."""

from __future__ import annotations

from typing import Any

import asyncpg

from common.clusters import PROPOSAL_COLUMNS, proposal_json

RUN_COLUMNS = (
    "id, model_id, requested_by, started_at, finished_at, status, items, clusters, regions,"
    " linkage_threshold, proposed, seconds, error"
)


async def list_proposals(
    pool: asyncpg.Pool, status: str | None, model_id: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Proposals, the largest gain first (status None: every status); and their total."""
    where = "($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR model_id = $2)"
    rows = await pool.fetch(
        f"""SELECT {PROPOSAL_COLUMNS} FROM cluster_proposals WHERE {where}
            ORDER BY gain DESC, created_at, id LIMIT $3 OFFSET $4""",
        status,
        model_id,
        limit,
        offset,
    )
    total = await pool.fetchval(
        f"SELECT count(*) FROM cluster_proposals WHERE {where}", status, model_id
    )
    return [proposal_json(r) for r in rows], int(total)


async def recent_runs(pool: asyncpg.Pool, model_id: str | None, limit: int) -> list[dict[str, Any]]:
    """The latest re-clustering runs, newest first."""
    rows = await pool.fetch(
        f"""SELECT {RUN_COLUMNS} FROM recluster_runs WHERE ($1::text IS NULL OR model_id = $1)
            ORDER BY started_at DESC LIMIT $2""",
        model_id,
        limit,
    )
    return [
        {
            **{k: r[k] for k in ("model_id", "requested_by", "status", "items", "clusters")},
            "id": str(r["id"]),
            "regions": r["regions"],
            "linkage_threshold": (
                round(float(r["linkage_threshold"]), 4) if r["linkage_threshold"] else None
            ),
            "proposed": r["proposed"],
            "seconds": round(float(r["seconds"]), 3) if r["seconds"] is not None else None,
            "error": r["error"],
            "started_at": r["started_at"].isoformat(),
            "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
        }
        for r in rows
    ]
