"""Content that was deleted: an event about it still on its way is finished quietly.

A purge (clusterer/purge.py for media, schemer/deletion.py for JSON) leaves the content's id
in `content_tombstones` in the same transaction as it deletes the row. A consumer that finds
no row asks here: deleted content ends the delivery, content that never existed is a fault
(a Permanent failure, parked with its reason).
"""

from __future__ import annotations

import uuid

import asyncpg
import structlog
from prometheus_client import Counter

from common.consumer import Permanent

log = structlog.get_logger(__name__)

DELETED_SKIPPED = Counter(
    "events_for_deleted_content_total",
    "Events that reached a consumer after their content was deleted (finished, not parked).",
)


async def was_deleted(conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID) -> bool:
    """Whether the content existed and was purged."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM content_tombstones WHERE content_id = $1)", content_id
    )
    return found


async def missing(conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID) -> None:
    """The content has no row: return when it was deleted (the caller stops there), raise
    Permanent when it never existed."""
    if await was_deleted(conn, content_id):
        DELETED_SKIPPED.inc()
        log.info("content deleted meanwhile; nothing to do", content_id=str(content_id))
        return
    raise Permanent(f"content {content_id} does not exist")
