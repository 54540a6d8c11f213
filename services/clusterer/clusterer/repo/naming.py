"""Cluster names: the ones taken, the placeholder a VLM may replace, a new name stored."""

from __future__ import annotations

import uuid
from typing import Literal

import asyncpg


async def taken_names(conn: asyncpg.Connection, model_id: str, base: str) -> set[str]:
    """Names of the model's clusters that `unique_name(base, ...)` must avoid."""
    pattern = base.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + " %"
    rows = await conn.fetch(
        "SELECT name FROM clusters WHERE model_id = $3 AND (name = $1 OR name LIKE $2)",
        base,
        pattern,
        model_id,
    )
    return {r["name"] for r in rows}


async def lock_placeholder_cluster(
    conn: asyncpg.Connection, content_id: uuid.UUID
) -> asyncpg.Record | None:
    """Lock the content's cluster (id, name) if it is provisional and still has its placeholder.

    None when it has been named already (by the VLM or an admin), confirmed, or not filed.
    """
    row: asyncpg.Record | None = await conn.fetchrow(
        """SELECT cl.id, cl.name, cl.model_id
           FROM content c JOIN clusters cl ON cl.id = c.cluster_id
           WHERE c.id = $1 AND cl.provisional AND cl.name_source = 'placeholder'
           FOR UPDATE OF cl""",
        content_id,
    )
    return row


async def rename(
    conn: asyncpg.Connection, cluster_id: uuid.UUID, name: str, source: Literal["vlm", "admin"]
) -> None:
    """Give the cluster a name (a name taken by another cluster raises UniqueViolationError)."""
    await conn.execute(
        """UPDATE clusters SET name = $2, name_source = $3, updated_at = now()
           WHERE id = $1""",
        cluster_id,
        name,
        source,
    )
