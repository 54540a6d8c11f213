"""uploads.deleted -> the documents leave their collections; JSON content no upload refers
to any more is purged; a deleted owner's collections are dropped with their tables.

The gateway deleted the uploads (their json_documents rows went with them, by cascade) and
named the collection each document was in. Each collection is handled under its row lock,
the one placement and approval hold, so a batch placing a document of a deleted upload has
either committed (its row is deleted here) or fails on the upload's foreign key. Everything
here is idempotent: deleting rows that are gone, counting again, dropping what is dropped.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import structlog
from prometheus_client import Counter

from common.consumer import Delivery
from common.db import quoted
from common.messages import UploadsDeleted
from schemer.deps import SchemerDeps
from schemer.repo import collections, ddl, documents

log = structlog.get_logger(__name__)

ROWS_DELETED = Counter(
    "collection_rows_deleted_total", "Rows removed from collection tables by deletions."
)
COLLECTIONS_DROPPED = Counter(
    "collections_dropped_total", "Collections dropped with their owner's deletion."
)


async def handle_deleted(deps: SchemerDeps, event: UploadsDeleted, delivery: Delivery) -> None:
    by_collection: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for document in event.documents:
        by_collection[document.collection_id].append(document.upload_id)
    for collection_id, upload_ids in sorted(by_collection.items()):
        await _forget(deps, collection_id, upload_ids)
    if event.content_ids:
        async with deps.pool.acquire() as conn:
            await documents.purge_json_content(conn, event.content_ids)
    if event.owner_deleted is not None:
        await _drop_owner(deps, event.owner_deleted, event.actor)


async def _forget(deps: SchemerDeps, collection_id: uuid.UUID, upload_ids: list[uuid.UUID]) -> None:
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await collections.lock(conn, collection_id)
        if row is None:
            return  # dropped meanwhile
        if row["table_name"] is not None:
            [qtable] = await quoted(conn, [row["table_name"]])
            async with documents.acting_as(conn, deps.role):
                removed = await documents.delete_rows(conn, qtable, upload_ids)
            ROWS_DELETED.inc(removed)
        await collections.recount(conn, collection_id)


async def _drop_owner(deps: SchemerDeps, owner: str, actor: str) -> None:
    async with deps.pool.acquire() as conn:
        for collection_id in await collections.of_owner(conn, owner):
            async with conn.transaction():
                row = await collections.lock(conn, collection_id)
                if row is None:
                    continue
                if row["table_name"] is not None:
                    [qtable] = await quoted(conn, [row["table_name"]])
                    async with documents.acting_as(conn, deps.role):
                        await documents.execute_ddl(conn, ddl.drop_table(qtable))
                await collections.delete(conn, collection_id)
                await collections.audit(
                    conn, actor, "collection.delete", collection_id, {"name": row["name"]}
                )
            COLLECTIONS_DROPPED.inc()
            log.info("collection dropped with its owner", collection=row["name"])
