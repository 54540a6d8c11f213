"""DELETE an upload, a job, or everything of one owner.

The upload rows go at once (404 afterwards, gone from search, clusters and collections, whose
views all go through uploads); the event written with them takes the rest away: content no
upload refers to any more, with its embedding, thumbnail, bytes and cluster membership
(clusterer/purge.py), folder links, documents in collections (schemer/deletion.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from common.messages import DELETED_UPLOADS_PER_EVENT
from gateway.auth import bound_owner, principal
from gateway.deps import DEPS
from gateway.errors import ApiError
from gateway.repo.deletion import (
    Deleted,
    announce_owner_deleted,
    delete_job,
    delete_object,
    delete_owner_batch,
)
from gateway.repo.scope import OwnerScope
from gateway.views import parse_id, scope

UPLOADS_DELETED = Counter(
    "uploads_deleted_total", "Uploads deleted, by why (request, owner, retention).", ["reason"]
)
OWNER_BATCH = DELETED_UPLOADS_PER_EVENT
MAX_OWNER_LENGTH = 200


def actor_of(request: web.Request) -> str:
    return f"key:{principal(request).key_id}"


def _answer(deleted: Deleted) -> web.Response:
    return web.json_response(
        {
            "deleted_uploads": [str(u) for u in deleted.upload_ids],
            "deleted_jobs": [str(j) for j in deleted.job_ids],
        }
    )


async def _delete(
    request: web.Request,
    delete: Callable[[asyncpg.Connection, OwnerScope, uuid.UUID, str], Awaitable[Deleted]],
    name: str,
    what: str,
) -> web.Response:
    deps = request.app[DEPS]
    target = parse_id(request, name, f"{what} id")
    async with deps.pool.acquire() as conn:
        deleted = await delete(conn, scope(request), target, actor_of(request))
    if not deleted.upload_ids:
        raise ApiError(404, f"no such {what}")
    UPLOADS_DELETED.labels("request").inc(len(deleted.upload_ids))
    deps.wake_relay()
    return _answer(deleted)


async def handle_delete_object(request: web.Request) -> web.Response:
    """One upload; its content follows once no upload refers to it."""
    return await _delete(request, delete_object, "object_id", "object")


async def handle_delete_job(request: web.Request) -> web.Response:
    """Every upload of one ingest request, and the job."""
    return await _delete(request, delete_job, "job_id", "job")


async def handle_delete_owner(request: web.Request) -> web.Response:
    """An admin's "delete everything of owner X": uploads, jobs, then collections.

    Deleted in batches, each its own transaction; a request cut off half-way is finished by
    asking again (what is gone stays gone)."""
    deps = request.app[DEPS]
    owner = request.match_info["owner"]
    if not owner or len(owner) > MAX_OWNER_LENGTH or not owner.isprintable():
        raise ApiError(400, f"owner must be 1-{MAX_OWNER_LENGTH} printable characters")
    bound = bound_owner(request)
    if bound is not None and bound != owner:
        # An admin key bound to an owner acts for that owner only (found by replaying ids
        # across owners: such a key could delete any other owner's data).
        raise ApiError(403, "an admin key bound to an owner can delete only that owner's data")
    target = OwnerScope(owner)
    actor = actor_of(request)
    total = Deleted()
    async with deps.pool.acquire() as conn:
        while True:
            batch = await delete_owner_batch(conn, target, actor, OWNER_BATCH)
            total.add(batch)
            UPLOADS_DELETED.labels("owner").inc(len(batch.upload_ids))
            deps.wake_relay()
            if len(batch.upload_ids) < OWNER_BATCH:
                break
        await announce_owner_deleted(conn, target, actor)
    deps.wake_relay()
    return web.json_response(
        {
            "owner": owner,
            "deleted_uploads": len(total.upload_ids),
            "deleted_jobs": len(total.job_ids),
        }
    )
