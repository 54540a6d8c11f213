"""uploads.deleted -> media content no upload refers to any more is purged; folders follow.

Purging one content is one transaction, in this lock order (the same as every other writer's,
so none deadlocks with it): the objects' locks (its bytes and thumbnail, common/objects.py),
its cluster's row, its own row. Under them nothing can refer to it anew unseen: an ingest of
the same bytes takes the object's lock before it writes its upload (and puts the bytes back if
they went), a join takes the cluster's row. Then, when no upload refers to it: its vector
leaves the cluster's sum and count (an empty cluster goes), the row goes (embeddings and
frames by cascade) leaving a tombstone (common/tombstones.py), and the objects no other row
refers to are removed — inside the transaction, so a crash after removing them redelivers
the event and finds the row still there to purge again; a redelivery after the commit finds
no row and does nothing. The folder of the cluster is synced after the commit (requested in
`folder_syncs` inside it, so a crash leaves it to the folder sweep).

Content another upload still refers to stays; its folder loses the deleted uploads' links.
"""

from __future__ import annotations

import uuid

import structlog
from prometheus_client import Counter

from clusterer import folders, repo
from clusterer.handlers import ClustererDeps
from clusterer.repo import purge as purging
from common.consumer import Delivery, Retryable
from common.messages import UploadsDeleted
from common.objects import lock_objects, remove_unreferenced, sha_of

log = structlog.get_logger(__name__)

PURGED = Counter(
    "content_purged_total",
    "Media content purged after its last upload was deleted (row, vector, bytes, thumbnail).",
)
ATTEMPTS = 10


async def handle_deleted(deps: ClustererDeps, event: UploadsDeleted, delivery: Delivery) -> None:
    """Purge what the deleted uploads leave unreferenced; sync the folders they were in."""
    syncs: set[uuid.UUID] = set()
    for content_id in event.content_ids:
        cluster_id = await purge(deps, content_id, event.actor)
        if cluster_id is not None:
            syncs.add(cluster_id)
    if syncs:
        await folders.run_pending_syncs(deps.pool, deps.storage, sorted(syncs))


async def purge(deps: ClustererDeps, content_id: uuid.UUID, actor: str) -> uuid.UUID | None:
    """Purge one content if nothing refers to it; the cluster whose folder needs a sync."""
    for _ in range(ATTEMPTS):
        seen = await purging.target(deps.pool, content_id)
        if seen is None:
            return None  # JSON (the schemer's), or purged already
        keys = [k for k in (seen.storage_key, seen.thumbnail_key, *seen.frame_keys) if k]
        async with deps.pool.acquire() as conn, conn.transaction():
            await lock_objects(conn, [seen.sha256, *(sha_of(k) for k in keys)])
            model_id = None
            if seen.cluster_id is not None:
                model_id = await purging.lock_cluster(conn, seen.cluster_id)
            standby = [await purging.lock_cluster(conn, cluster) for cluster, _ in seen.standby]
            item = await purging.lock_content(conn, content_id)
            if item is None:
                return None
            if item != seen or (item.cluster_id and model_id is None) or None in standby:
                # Filed, moved (a merge, a refile) or given its thumbnail before we held it:
                # look again, so that the locks held are those of what it is now.
                continue
            if item.cluster_id is not None:
                await repo.request_folder_syncs(conn, [item.cluster_id])
            if await purging.referenced(conn, content_id):
                return item.cluster_id  # another upload still has it: only links go
            if item.cluster_id is not None and model_id is not None:
                await purging.leave_cluster(conn, item.cluster_id, model_id, content_id)
            for cluster, standby_model in item.standby:  # a model switch's standby clusters
                await purging.leave_cluster(conn, cluster, standby_model, content_id)
            await purging.delete_content(conn, item, actor)
            await remove_unreferenced(conn, deps.storage, keys)
        PURGED.inc()
        log.info("content purged", content_id=str(content_id), cluster_id=str(item.cluster_id))
        return item.cluster_id
    raise Retryable(f"content {content_id} kept moving between clusters")
