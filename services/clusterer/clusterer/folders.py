"""Cluster folders: a view over the database made of links to the immutable stored files.

`media/clusters/{cluster_id}/` holds one link per upload (and `thumbnails/` one per upload).
Adding links (after an assignment, or for a new upload of stored content) holds the folder's
advisory lock shared; bringing a whole folder in line with the database (after a merge, a
reject or a re-evaluation, or a rebuild) holds it exclusively, so a sync never removes a link
that an assignment has just made, and links never land in a folder being removed.

Only a filesystem store keeps folders (`Storage.folders`). With object storage a folder is a
listing through the API (GET /api/v1/clusters/{id}) and nothing is written: the pending
syncs are marked done, so that none waits for a folder that will never exist.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import structlog

from clusterer import repo
from clusterer.logic import folder, link_name, thumbnail_name
from common.storage import FolderLinks, Storage

log = structlog.get_logger(__name__)

THUMBNAILS = "thumbnails"


@contextlib.asynccontextmanager
async def _folder_lock(
    pool: asyncpg.Pool, cluster_id: uuid.UUID, *, shared: bool
) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn:
        await repo.lock_folder(conn, cluster_id, shared=shared)
        try:
            yield conn
        finally:
            try:
                await repo.unlock_folder(conn, cluster_id, shared=shared)
            except BaseException:
                # A session lock must never go back to the pool with its connection.
                conn.terminate()
                raise


async def _add(links: FolderLinks, cluster_id: uuid.UUID, link: repo.Link) -> None:
    base = folder(cluster_id)
    await links.link(
        link.storage_key, f"{base}/{link_name(link.upload_id, link.filename, link.mime_type)}"
    )
    if link.thumbnail_key:
        await links.link(
            link.thumbnail_key, f"{base}/{THUMBNAILS}/{thumbnail_name(link.upload_id)}"
        )


async def ensure_links(
    pool: asyncpg.Pool, storage: Storage, content_id: uuid.UUID
) -> uuid.UUID | None:
    """Link every upload of the content into its cluster's folder; its cluster, or None."""
    links = storage.folders
    if links is None:
        async with pool.acquire() as conn:
            return await repo.cluster_of(conn, content_id)
    for _ in range(10):
        async with pool.acquire() as conn:
            cluster_id = await repo.cluster_of(conn, content_id)
        if cluster_id is None:
            return None
        async with _folder_lock(pool, cluster_id, shared=True) as conn:
            # Under the lock the content cannot be moved out from under us unnoticed: a move
            # commits first and then syncs this folder, which waits for us.
            if await repo.cluster_of(conn, content_id) != cluster_id:
                continue
            for link in await repo.links_of_content(conn, content_id):
                await _add(links, cluster_id, link)
            return cluster_id
    raise RuntimeError(f"content {content_id} kept moving between clusters")


async def sync_folder(
    pool: asyncpg.Pool,
    storage: Storage,
    cluster_id: uuid.UUID,
    *,
    from_scratch: bool = False,
) -> None:
    """Make one folder exactly what the database says: add missing links, remove others."""
    links = storage.folders
    if links is None:
        return
    base = folder(cluster_id)
    async with _folder_lock(pool, cluster_id, shared=False) as conn:
        if not await repo.cluster_exists(conn, cluster_id):
            await links.delete_folder(base)
            return
        if from_scratch:
            await links.delete_folder(base)
        members = await repo.links_of_cluster(conn, cluster_id)
        wanted = {link_name(k.upload_id, k.filename, k.mime_type): k for k in members}
        wanted_thumbs = {thumbnail_name(k.upload_id) for k in members if k.thumbnail_key}
        present = set(await links.list_folder(base))
        present_thumbs = set(await links.list_folder(f"{base}/{THUMBNAILS}"))
        for name in present - wanted.keys():
            await links.delete(f"{base}/{name}")
        for name in present_thumbs - wanted_thumbs:
            await links.delete(f"{base}/{THUMBNAILS}/{name}")
        for name, link in wanted.items():
            if name not in present or (
                link.thumbnail_key and thumbnail_name(link.upload_id) not in present_thumbs
            ):
                await _add(links, cluster_id, link)


async def run_pending_syncs(
    pool: asyncpg.Pool, storage: Storage, cluster_ids: list[uuid.UUID] | None = None
) -> int:
    """Sync the folders waiting for it (these, or all); a request made meanwhile stays."""
    pending = await repo.pending_folder_syncs(pool, cluster_ids)
    for cluster_id, requested_at in pending:
        await sync_folder(pool, storage, cluster_id)
        await repo.folder_synced(pool, cluster_id, requested_at)
    return len(pending)


async def rebuild(pool: asyncpg.Pool, storage: Storage, *, from_scratch: bool) -> int:
    """Bring every folder in line with the database; folders of unknown clusters go."""
    ids = await repo.cluster_ids(pool)
    on_disk = set()
    if storage.folders is not None:
        for name in await storage.folders.subfolders("media/clusters"):
            try:
                on_disk.add(uuid.UUID(name))
            except ValueError:
                log.warning("not a cluster folder; left alone", name=name)
    for cluster_id in sorted(ids | on_disk):
        await sync_folder(pool, storage, cluster_id, from_scratch=from_scratch)
    await repo.forget_folder_syncs_except(pool, ids)
    return len(ids)
