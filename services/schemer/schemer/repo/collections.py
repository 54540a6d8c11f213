"""Collections and their migrations: the rows in json_collections and json_migrations."""

from __future__ import annotations

import uuid
from typing import Any, TypeAlias

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def job_collection(conn: Conn, job_id: uuid.UUID) -> uuid.UUID | None:
    """The collection another part of this job's batch opened or went to (one batch, one
    collection)."""
    found: uuid.UUID | None = await conn.fetchval(
        """(SELECT id FROM json_collections WHERE opened_by_job = $1 LIMIT 1)
           UNION ALL
           (SELECT d.collection_id FROM uploads u JOIN json_documents d ON d.upload_id = u.id
            WHERE u.job_id = $1 LIMIT 1)
           LIMIT 1""",
        job_id,
    )
    return found


async def by_name(conn: Conn, owner: str, name: str) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM json_collections WHERE owner = $1 AND name = $2", owner, name
    )
    return found


async def shapes(conn: Conn, owner: str) -> list[asyncpg.Record]:
    """Every collection of the owner with the key paths a document is compared with."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, name, paths FROM json_collections WHERE owner = $1 ORDER BY created_at",
        owner,
    )
    return rows


async def names_like(conn: Conn, owner: str, prefix: str) -> set[str]:
    rows = await conn.fetch(
        """SELECT name FROM json_collections
           WHERE owner = $1 AND (name = $2 OR name LIKE $3)""",
        owner,
        prefix,
        prefix.replace("_", "\\_") + "\\_%",
    )
    return {row["name"] for row in rows}


async def create(conn: Conn, collection: dict[str, Any]) -> bool:
    """Insert a new collection; False when the owner has one of that name already."""
    created = await conn.fetchval(
        """INSERT INTO json_collections
               (id, owner, name, name_source, storage, paths, stats, decision, json_schema,
                proposed_ddl, opened_by_job)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (owner, name) DO NOTHING RETURNING 1""",
        collection["id"],
        collection["owner"],
        collection["name"],
        collection["name_source"],
        collection["storage"],
        collection["paths"],
        collection["stats"],
        collection["decision"],
        collection["json_schema"],
        collection["proposed_ddl"],
        collection.get("opened_by_job"),
    )
    return bool(created)


async def lock(conn: asyncpg.Connection, collection_id: uuid.UUID) -> asyncpg.Record | None:
    """The collection, locked until the transaction ends (one writer of its table and stats
    at a time: approval and ingest never interleave)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM json_collections WHERE id = $1 FOR UPDATE", collection_id
    )
    return row


async def lock_owner(conn: asyncpg.Connection, owner: str) -> None:
    """One schemer at a time opens a collection for an owner (until the transaction ends)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('mammothbox.schemer:' || $1, 0))", owner
    )


async def save_inference(
    conn: asyncpg.Connection,
    collection_id: uuid.UUID,
    *,
    paths: list[str],
    stats: dict[str, Any],
    fields: list[dict[str, Any]],
    json_schema: dict[str, Any],
    added: int,
    decision: dict[str, Any] | None = None,
    storage: str | None = None,
    proposed_ddl: str | None = None,
) -> None:
    """Statistics after a batch; while provisional also the proposal (decision, storage, DDL)."""
    await conn.execute(
        """UPDATE json_collections
           SET paths = $2, stats = $3, json_schema = $4,
               document_count = document_count + $5,
               decision = coalesce($6, decision), storage = coalesce($7, storage),
               proposed_ddl = coalesce($8, proposed_ddl), fields = $9, updated_at = now()
           WHERE id = $1""",
        collection_id,
        paths,
        stats,
        json_schema,
        added,
        decision,
        storage,
        proposed_ddl,
        fields,
    )


async def set_status(conn: asyncpg.Connection, collection_id: uuid.UUID, status: str) -> None:
    await conn.execute(
        "UPDATE json_collections SET status = $2, updated_at = now() WHERE id = $1",
        collection_id,
        status,
    )


async def table_name_taken(conn: asyncpg.Connection, name: str, collection_id: uuid.UUID) -> bool:
    taken: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM json_collections WHERE table_name = $1 AND id <> $2)",
        name,
        collection_id,
    )
    return taken


async def materialised(
    conn: asyncpg.Connection,
    collection_id: uuid.UUID,
    *,
    storage: str,
    table_name: str,
    columns: list[dict[str, Any]] | None,
    actor: str,
) -> None:
    """The table exists: its name, storage and columns are the collection's from now on."""
    await conn.execute(
        """UPDATE json_collections
           SET storage = $2, table_name = $3, columns = $4, decided_at = now(),
               decided_by = $5, updated_at = now()
           WHERE id = $1""",
        collection_id,
        storage,
        table_name,
        columns,
        actor,
    )


async def set_columns(
    conn: asyncpg.Connection, collection_id: uuid.UUID, columns: list[dict[str, Any]]
) -> None:
    await conn.execute(
        "UPDATE json_collections SET columns = $2, updated_at = now() WHERE id = $1",
        collection_id,
        columns,
    )


async def open_migration(
    conn: asyncpg.Connection, collection_id: uuid.UUID
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        """SELECT n, status, changes, ddl FROM json_migrations
           WHERE collection_id = $1 AND status <> 'applied'""",
        collection_id,
    )
    return row


async def migration(
    conn: asyncpg.Connection, collection_id: uuid.UUID, n: int
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT n, status, changes, ddl FROM json_migrations WHERE collection_id = $1 AND n = $2",
        collection_id,
        n,
    )
    return row


async def propose_migration(
    conn: asyncpg.Connection,
    collection_id: uuid.UUID,
    changes: list[dict[str, Any]],
    ddl: str,
) -> int:
    """Open a migration, or extend the one that waits (its number stays); its number."""
    n: int = await conn.fetchval(
        """WITH open AS (
               UPDATE json_migrations SET changes = $2, ddl = $3
               WHERE collection_id = $1 AND status = 'proposed' RETURNING n
           ), new AS (
               INSERT INTO json_migrations (collection_id, n, changes, ddl)
               SELECT $1, coalesce((SELECT max(n) FROM json_migrations
                                    WHERE collection_id = $1), 0) + 1, $2, $3
               WHERE NOT EXISTS (SELECT FROM open)
               RETURNING n)
           SELECT n FROM open UNION ALL SELECT n FROM new""",
        collection_id,
        changes,
        ddl,
    )
    return n


async def set_migration_status(
    conn: asyncpg.Connection, collection_id: uuid.UUID, n: int, status: str
) -> None:
    await conn.execute(
        """UPDATE json_migrations
           SET status = $3, applied_at = CASE WHEN $3 = 'applied' THEN now() END
           WHERE collection_id = $1 AND n = $2""",
        collection_id,
        n,
        status,
    )


async def audit(
    conn: Conn, actor: str, action: str, collection_id: uuid.UUID, details: dict[str, Any]
) -> None:
    await conn.execute(
        """INSERT INTO audit_log (actor, action, entity, entity_id, details)
           VALUES ($1, $2, 'collection', $3, $4)""",
        actor,
        action,
        str(collection_id),
        details,
    )


async def recount(conn: asyncpg.Connection, collection_id: uuid.UUID) -> None:
    """The collection's document count, from its documents (after some were deleted: exact
    however often a deletion is handled)."""
    await conn.execute(
        """UPDATE json_collections SET updated_at = now(),
               document_count = (SELECT count(*) FROM json_documents WHERE collection_id = $1)
           WHERE id = $1""",
        collection_id,
    )


async def of_owner(conn: Conn, owner: str) -> list[uuid.UUID]:
    """Every collection of one owner."""
    rows = await conn.fetch("SELECT id FROM json_collections WHERE owner = $1 ORDER BY id", owner)
    return [row["id"] for row in rows]


async def delete(conn: asyncpg.Connection, collection_id: uuid.UUID) -> None:
    """The collection's row (its documents' and migrations' rows by cascade)."""
    await conn.execute("DELETE FROM json_collections WHERE id = $1", collection_id)
