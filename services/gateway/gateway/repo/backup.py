"""The whole deployment's rows as the operator's tools see them (gateway/backup.py): a backup's
snapshot and the objects it refers to, a restore's target and the work it drives again, the
store check. Every owner's rows: these never answer a request."""

from __future__ import annotations

import asyncpg

# Every object a row refers to: stored media, thumbnails, video frames (all content-addressed
# keys, objects/ab/cd/<sha256>).
_STORED_KEYS = """
SELECT storage_key AS key FROM content WHERE kind <> 'json' AND storage_key IS NOT NULL
UNION SELECT thumbnail_key FROM content WHERE thumbnail_key IS NOT NULL
UNION SELECT storage_key FROM video_frames WHERE storage_key IS NOT NULL
"""


async def export_snapshot(conn: asyncpg.Connection) -> str:
    """The id of this (repeatable read) transaction's snapshot, for pg_dump --snapshot."""
    snapshot: str = await conn.fetchval("SELECT pg_export_snapshot()")
    return snapshot


async def stored_keys(conn: asyncpg.Connection) -> list[str]:
    """Every storage key a row refers to, sorted."""
    return sorted(row["key"] for row in await conn.fetch(_STORED_KEYS))


async def summary(conn: asyncpg.Connection) -> dict[str, int]:
    """How much there is: what a restore must bring back."""
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM jobs) AS jobs,
                  (SELECT count(*) FROM uploads) AS uploads,
                  (SELECT count(*) FROM content) AS content,
                  (SELECT count(*) FROM embeddings) AS embeddings,
                  (SELECT count(*) FROM clusters) AS clusters,
                  (SELECT count(*) FROM json_collections) AS collections,
                  (SELECT count(*) FROM json_documents) AS documents"""
    )
    assert row is not None
    return dict(row)


async def user_tables(conn: asyncpg.Connection) -> list[str]:
    """Tables in the schemas MammothBox uses: a restore's target must have none."""
    rows = await conn.fetch(
        """SELECT schemaname || '.' || tablename AS name FROM pg_tables
           WHERE schemaname IN ('public', 'collections') ORDER BY 1"""
    )
    return [row["name"] for row in rows]


async def give_collections_to(conn: asyncpg.Connection, role: str) -> int:
    """After a restore without owners: the schemer's role gets its schema and tables back
    (rights on `collections` only, as migration 0009 made them). Tables handed over."""
    if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        return 0
    owner = await conn.fetchval("SELECT quote_ident($1)", role)
    await conn.execute(f"GRANT USAGE, CREATE ON SCHEMA collections TO {owner}")
    tables = await conn.fetch(
        """SELECT quote_ident(tablename) AS name FROM pg_tables
           WHERE schemaname = 'collections' ORDER BY 1"""
    )
    for row in tables:
        await conn.execute(f"ALTER TABLE collections.{row['name']} OWNER TO {owner}")
    return len(tables)


async def unfinished_media(conn: asyncpg.Connection, analyzer_queue: str) -> list[asyncpg.Record]:
    """Media content still on its way: ingested, embedded and not clustered yet, or clustered
    without its analysis (unless that analysis waits in `analyzer_queue`'s dead letters), with
    what its next event needs: for embedded content, the active model (when it has its vector)."""
    return list(
        await conn.fetch(
            """SELECT c.id, c.first_job_id, c.sha256, c.kind, c.mime_type, c.size_bytes, c.stage,
                  c.near_duplicate_of,
                  (SELECT e.model_id FROM embeddings e JOIN models m ON m.id = e.model_id
                   WHERE e.content_id = c.id AND m.active) AS model_id
           FROM content c
           WHERE c.kind <> 'json'
             AND (c.stage IN ('ingested', 'embedded')
                  OR (c.stage = 'clustered' AND c.analyzed_at IS NULL
                      AND NOT EXISTS (SELECT FROM dead_letters dl
                                      WHERE dl.content_id = c.id AND dl.queue = $1
                                        AND dl.requeued_at IS NULL)))
           ORDER BY c.stage_updated_at""",
            analyzer_queue,
        )
    )


async def unplaced_documents(conn: asyncpg.Connection, json_queue: str) -> list[asyncpg.Record]:
    """JSON uploads without their place in a collection, by job (with the collection the job
    named), leaving out jobs whose JSON event waits in the dead letters (of `json_queue`)."""
    return list(
        await conn.fetch(
            """SELECT u.job_id, j.collection, array_agg(u.id ORDER BY u.position) AS upload_ids
           FROM uploads u
           JOIN content c ON c.id = u.content_id AND c.kind = 'json'
           JOIN jobs j ON j.id = u.job_id
           WHERE NOT EXISTS (SELECT FROM json_documents d WHERE d.upload_id = u.id)
             AND NOT EXISTS (SELECT FROM dead_letters dl
                             WHERE dl.job_id = u.job_id AND dl.queue = $1
                               AND dl.requeued_at IS NULL)
           GROUP BY u.job_id, j.collection
           ORDER BY min(u.created_at)""",
            json_queue,
        )
    )


async def collections_deciding(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Collections an admin's approval or rejection is being carried out for."""
    return list(
        await conn.fetch(
            """SELECT id, status FROM json_collections
           WHERE status IN ('approving', 'rejecting') ORDER BY id"""
        )
    )


async def request_every_folder_sync(conn: asyncpg.Connection) -> int:
    """Ask the clusterer to sync every cluster's folder (its links are not in a backup)."""
    done = await conn.execute(
        """INSERT INTO folder_syncs (cluster_id) SELECT id FROM clusters
           ON CONFLICT (cluster_id) DO UPDATE SET requested_at = now()"""
    )
    return int(done.split()[-1])
