"""Stored objects: their locks and whether any row still refers to them.

Objects are immutable and content-addressed, so removing one is only safe under its lock:
the gateway's ingest takes the locks of the objects it placed before it writes their rows
and puts a removed file back under them (`Writer.ensure_placed`); the embedder does the same
for its thumbnails; the storage sweeper (gateway/sweep.py) and the purge of deleted content
(clusterer/purge.py) remove an object only holding its lock, after finding no row that refers
to it. A transaction-level advisory lock keyed on the sha256, taken in sha256 order so that
concurrent holders of several never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from common.db import Conn
from common.storage import Storage


async def referenced_keys(conn: Conn, keys: list[str]) -> set[str]:
    """The storage keys among `keys` that a row refers to: content (its storage key is
    `key_for(sha256)`, found through the sha256 key), a thumbnail, a video frame.

    The sweeper's and the purge's question, about every owner's rows."""
    rows = await conn.fetch(
        """SELECT k FROM unnest($1::text[]) AS k
           WHERE EXISTS (SELECT FROM content c
                         WHERE c.sha256 = right(k, 64) AND c.storage_key = k)
              OR EXISTS (SELECT FROM content c WHERE c.thumbnail_key = k)
              OR EXISTS (SELECT FROM video_frames f WHERE f.storage_key = k)""",
        keys,
    )
    return {row["k"] for row in rows}


# The lock of one stored object, keyed on its sha256; the storage sweeper takes it too
# (gateway/sweep.py). Taken in sha256 order (the array comes sorted, unnest keeps its order)
# so that concurrent ingests never deadlock on each other.
_LOCK_OBJECTS = """
SELECT count(pg_advisory_xact_lock(hashtextextended('mammothbox.object:' || s, 0)))
FROM unnest($1::text[]) AS s
"""


async def lock_objects(conn: asyncpg.Connection, sha256s: Iterable[str]) -> None:
    """Take the locks of these stored objects until the transaction ends.

    Rows read after this (in a later statement: READ COMMITTED takes each statement's
    snapshot at its start) see whatever a holder of the lock committed before.
    """
    ordered = sorted(set(sha256s))
    if ordered:
        await conn.fetchval(_LOCK_OBJECTS, ordered)


def sha_of(key: str) -> str:
    """The sha256 an object key (`key_for`) names."""
    return key.rsplit("/", 1)[1]


async def remove_unreferenced(
    conn: asyncpg.Connection, storage: Storage, keys: list[str]
) -> list[str]:
    """Remove the objects among `keys` that no row refers to, holding their locks (taken here
    if the caller's transaction does not hold them yet); the keys removed."""
    async with conn.transaction():
        await lock_objects(conn, [sha_of(k) for k in keys])
        used = await referenced_keys(conn, keys)
        removed = [k for k in keys if k not in used]
        for key in removed:
            await storage.delete(key)
    return removed
