"""Folder links: what each upload's link points at, folder locks, pending folder syncs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class Link:
    """One upload's place in a folder: what it points at."""

    upload_id: uuid.UUID
    filename: str | None
    mime_type: str
    storage_key: str
    thumbnail_key: str | None


async def cluster_of(conn: asyncpg.Connection, content_id: uuid.UUID) -> uuid.UUID | None:
    """The content's cluster, None when it is not filed."""
    value: uuid.UUID | None = await conn.fetchval(
        "SELECT cluster_id FROM content WHERE id = $1", content_id
    )
    return value


async def links_of_content(conn: asyncpg.Connection, content_id: uuid.UUID) -> list[Link]:
    """A link per upload of one content."""
    return await _links(conn, "c.id = $1", content_id)


async def links_of_cluster(conn: asyncpg.Connection, cluster_id: uuid.UUID) -> list[Link]:
    """A link per upload of every content in a cluster."""
    return await _links(conn, "c.cluster_id = $1", cluster_id)


async def _links(conn: asyncpg.Connection, where: str, value: uuid.UUID) -> list[Link]:
    rows = await conn.fetch(
        f"""SELECT u.id AS upload_id, u.filename, c.mime_type, c.storage_key, c.thumbnail_key
            FROM content c JOIN uploads u ON u.content_id = c.id
            WHERE {where} AND c.storage_key IS NOT NULL""",
        value,
    )
    return [Link(**dict(r)) for r in rows]


async def cluster_exists(conn: asyncpg.Connection, cluster_id: uuid.UUID) -> bool:
    """Whether the cluster exists (a folder of one that does not is removed)."""
    return bool(await conn.fetchval("SELECT 1 FROM clusters WHERE id = $1", cluster_id))


async def cluster_ids(pool: asyncpg.Pool) -> set[uuid.UUID]:
    """Every cluster's id."""
    return {r["id"] for r in await pool.fetch("SELECT id FROM clusters")}


# Session-level, not transaction-level: a folder stays locked while its files are written,
# which happens outside any transaction.
def _folder_lock_sql(kind: str) -> str:
    return f"SELECT {kind}(hashtextextended('mammothbox.folder:' || $1::text, 0))"


async def lock_folder(conn: asyncpg.Connection, cluster_id: uuid.UUID, *, shared: bool) -> None:
    """Take the folder's session-level advisory lock, shared or exclusive."""
    kind = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
    await conn.execute(_folder_lock_sql(kind), str(cluster_id))


async def unlock_folder(conn: asyncpg.Connection, cluster_id: uuid.UUID, *, shared: bool) -> None:
    """Release the lock `lock_folder` took with the same arguments."""
    kind = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
    await conn.execute(_folder_lock_sql(kind), str(cluster_id))


async def request_folder_syncs(conn: asyncpg.Connection, cluster_ids: list[uuid.UUID]) -> None:
    """Record, in the caller's transaction, that these folders must be synced."""
    await conn.executemany(
        """INSERT INTO folder_syncs (cluster_id) VALUES ($1)
           ON CONFLICT (cluster_id) DO UPDATE SET requested_at = clock_timestamp()""",
        [(c,) for c in cluster_ids],
    )


async def pending_folder_syncs(
    pool: asyncpg.Pool, cluster_ids: list[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, datetime]]:
    """(cluster, requested at) of each folder waiting for a sync: of these, or of all."""
    rows = await pool.fetch(
        "SELECT cluster_id, requested_at FROM folder_syncs"
        + (" WHERE cluster_id = ANY($1::uuid[])" if cluster_ids is not None else ""),
        *([cluster_ids] if cluster_ids is not None else []),
    )
    return [(r["cluster_id"], r["requested_at"]) for r in rows]


async def folder_synced(pool: asyncpg.Pool, cluster_id: uuid.UUID, requested_at: datetime) -> None:
    """Clear the folder's sync request unless it was made again after `requested_at`."""
    await pool.execute(
        "DELETE FROM folder_syncs WHERE cluster_id = $1 AND requested_at <= $2",
        cluster_id,
        requested_at,
    )


async def forget_folder_syncs_except(pool: asyncpg.Pool, cluster_ids: set[uuid.UUID]) -> None:
    """Drop the sync requests of clusters not among these: clusters gone, folders removed."""
    await pool.execute(
        "DELETE FROM folder_syncs WHERE cluster_id <> ALL($1::uuid[])", list(cluster_ids)
    )
