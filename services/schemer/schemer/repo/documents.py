"""Uploads, where their documents went (json_documents), and the collection tables."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

from schemer.repo import ddl

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True)
class Upload:
    """A JSON upload waiting for its collection, with its document as stored (text)."""

    upload_id: uuid.UUID
    owner: str
    content_id: uuid.UUID
    document: str


async def unplaced(conn: Conn, upload_ids: Sequence[uuid.UUID]) -> list[Upload]:
    """The JSON uploads among these that no collection holds yet, in their job's order."""
    rows = await conn.fetch(
        """SELECT u.id, u.owner, u.content_id, c.document::text AS document
           FROM uploads u JOIN content c ON c.id = u.content_id
           WHERE u.id = ANY($1::uuid[]) AND c.kind = 'json'
             AND NOT EXISTS (SELECT FROM json_documents d WHERE d.upload_id = u.id)
           ORDER BY u.job_id, u.position""",
        list(upload_ids),
    )
    return [Upload(r["id"], r["owner"], r["content_id"], r["document"]) for r in rows]


async def uploads_of_content(
    conn: Conn, job_id: uuid.UUID, content_id: uuid.UUID
) -> list[uuid.UUID]:
    """The job's uploads of one content (what an event of the first version stands for)."""
    rows = await conn.fetch(
        "SELECT id FROM uploads WHERE job_id = $1 AND content_id = $2 ORDER BY position",
        job_id,
        content_id,
    )
    return [row["id"] for row in rows]


async def placed(conn: Conn, upload_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT upload_id FROM json_documents WHERE upload_id = ANY($1::uuid[])", list(upload_ids)
    )
    return {row["upload_id"] for row in rows}


async def kept(conn: asyncpg.Connection, upload_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Those of the uploads not deleted, key-share-locked until the transaction ends: a
    deletion of one waits for the placement, then takes its document with it."""
    rows = await conn.fetch(
        "SELECT id FROM uploads WHERE id = ANY($1::uuid[]) ORDER BY id FOR KEY SHARE",
        list(upload_ids),
    )
    return {row["id"] for row in rows}


async def record(
    conn: asyncpg.Connection,
    collection_id: uuid.UUID,
    placement: str,
    uploads: Sequence[Upload],
    rows: dict[uuid.UUID, tuple[int, bool]] | None = None,
) -> int:
    """Record where documents went (staged, or their row and whether part overflowed); a
    staged document moved into the table is updated. How many were new to the collection."""
    rows = rows or {}
    ids = [u.upload_id for u in uploads]
    new: int = await conn.fetchval(
        """WITH w AS (
               INSERT INTO json_documents
                   (upload_id, collection_id, content_id, placement, row_id, overflow, placed_at)
               SELECT t.u, $1, t.c, $2, t.r, coalesce(t.o, false),
                      CASE WHEN $2 <> 'staged' THEN now() END
               FROM unnest($3::uuid[], $4::uuid[], $5::bigint[], $6::boolean[]) AS t(u, c, r, o)
               ON CONFLICT (upload_id) DO UPDATE
               SET placement = EXCLUDED.placement, row_id = EXCLUDED.row_id,
                   overflow = EXCLUDED.overflow, placed_at = EXCLUDED.placed_at
               RETURNING (xmax = 0) AS inserted)
           SELECT count(*) FILTER (WHERE inserted) FROM w""",
        collection_id,
        placement,
        ids,
        [u.content_id for u in uploads],
        [rows[i][0] if i in rows else None for i in ids],
        [rows[i][1] if i in rows else None for i in ids],
    )
    return new


async def mark_stored(conn: asyncpg.Connection, content_ids: Sequence[uuid.UUID]) -> None:
    """JSON content has reached a collection (the first of its uploads to)."""
    await conn.execute(
        """UPDATE content SET stage = 'stored', stage_updated_at = now()
           WHERE id = ANY($1::uuid[]) AND kind = 'json' AND stage = 'ingested'""",
        list(set(content_ids)),
    )


async def staged(conn: Conn, collection_id: uuid.UUID, limit: int) -> list[Upload]:
    """A batch of the collection's staged documents."""
    rows = await conn.fetch(
        """SELECT d.upload_id, u.owner, d.content_id, c.document::text AS document
           FROM json_documents d JOIN uploads u ON u.id = d.upload_id
           JOIN content c ON c.id = d.content_id
           WHERE d.collection_id = $1 AND d.placement = 'staged'
           ORDER BY d.upload_id LIMIT $2""",
        collection_id,
        limit,
    )
    return [Upload(r["upload_id"], r["owner"], r["content_id"], r["document"]) for r in rows]


# The server's answers, remembered: quote_ident of a name never changes (a batch would
# otherwise ask again for its table's and columns' names every time).


async def can_use_role(conn: Conn, role: str) -> str | None:
    """None when this login may act as `role`; otherwise why not."""
    exists = await conn.fetchval("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", role)
    if not exists:
        return f"role {role!r} does not exist"
    member = await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", role)
    return None if member else f"{role!r} is not granted to this login"


@asynccontextmanager
async def acting_as(conn: asyncpg.Connection, role: str | None) -> AsyncIterator[None]:
    """Run what the block does as `role` (inside the caller's transaction), then switch back:
    DDL and writes to `collections` run with rights on that schema only."""
    if role is None:
        yield
        return
    await conn.execute("SELECT set_config('role', $1, true)", role)
    try:
        yield
    finally:
        await conn.execute("SELECT set_config('role', 'none', true)")


async def execute_ddl(conn: asyncpg.Connection, statement: str) -> None:
    await conn.execute(statement)


async def insert_rows(
    conn: asyncpg.Connection,
    qtable: str,
    columns: Sequence[tuple[str, str]],
    upload_ids: list[uuid.UUID],
    values: list[list[Any]],
    overflows: list[str | None],
) -> dict[uuid.UUID, int]:
    """Insert rows (values per column, in the columns' order); row id by upload."""
    rows = await conn.fetch(ddl.insert_rows(qtable, columns), upload_ids, *values, overflows)
    return {row["_upload_id"]: row["_id"] for row in rows}


async def insert_documents(
    conn: asyncpg.Connection, qtable: str, upload_ids: list[uuid.UUID], documents: list[str]
) -> dict[uuid.UUID, int]:
    rows = await conn.fetch(ddl.insert_documents(qtable), upload_ids, documents)
    return {row["_upload_id"]: row["_id"] for row in rows}


async def overflow_rows(
    conn: asyncpg.Connection, qtable: str, after: int, limit: int
) -> list[asyncpg.Record]:
    """Rows whose _overflow holds something, after row `after` (a migration's backfill)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT _id, _upload_id, _overflow::text AS overflow FROM {ddl.qualified(qtable)}
            WHERE _overflow IS NOT NULL AND _id > $1 ORDER BY _id LIMIT $2""",
        after,
        limit,
    )
    return rows


async def update_backfilled(
    conn: asyncpg.Connection,
    qtable: str,
    columns: Sequence[tuple[str, str]],
    row_ids: list[int],
    values: list[list[Any]],
    overflows: list[str | None],
) -> None:
    """Set the migrated columns of rows and what is left of their overflow."""
    await conn.execute(ddl.update_rows(qtable, columns), row_ids, *values, overflows)


async def clear_overflow_flags(conn: asyncpg.Connection, upload_ids: list[uuid.UUID]) -> None:
    await conn.execute(
        "UPDATE json_documents SET overflow = false WHERE upload_id = ANY($1::uuid[])", upload_ids
    )


async def delete_rows(conn: asyncpg.Connection, qtable: str, upload_ids: list[uuid.UUID]) -> int:
    """Delete deleted uploads' rows from a collection's table; how many there were."""
    removed: int = await conn.fetchval(
        f"""WITH d AS (DELETE FROM {ddl.qualified(qtable)} WHERE _upload_id = ANY($1::uuid[])
                       RETURNING 1)
            SELECT count(*) FROM d""",
        upload_ids,
    )
    return removed


async def purge_json_content(conn: asyncpg.Connection, content_ids: list[uuid.UUID]) -> int:
    """Delete the JSON content among these that no upload refers to any more, leaving
    tombstones; how many went. The rows are locked first, so an ingest of the same document
    either committed its upload before (and is seen) or waits and then stores it anew."""
    async with conn.transaction():
        await conn.execute(
            """SELECT FROM content WHERE id = ANY($1::uuid[]) AND kind = 'json'
               ORDER BY id FOR UPDATE""",
            content_ids,
        )
        purged: int = await conn.fetchval(
            """WITH d AS (
                   DELETE FROM content c
                   WHERE c.id = ANY($1::uuid[]) AND c.kind = 'json'
                     AND NOT EXISTS (SELECT FROM uploads u WHERE u.content_id = c.id)
                   RETURNING c.id, c.sha256, c.kind
               ), t AS (
                   INSERT INTO content_tombstones (content_id, sha256, kind)
                   SELECT id, sha256, kind FROM d ON CONFLICT DO NOTHING
               )
               SELECT count(*) FROM d""",
            content_ids,
        )
    return purged
