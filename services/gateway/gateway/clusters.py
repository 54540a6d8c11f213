"""Clusters: listed and shown from the database; changed by commands the clusterer carries out.

A key bound to an owner sees of a cluster only what its own members make of it (counts,
name, thumbnails, members): gateway/repo/clusters.py.

PATCH waits for the clusterer's answer (up to CLUSTER_COMMAND_TIMEOUT_S) and answers with the
result: 200, or 404/400/409 as the clusterer decided. 504 means no answer in time; the command
may still be carried out later, so look at the cluster before sending it again.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from common.cluster_commands import Change, ClusterCommand, ClusterCommandReply
from common.clusters import cluster_json
from common.model_switch import active_model
from common.rpc import RpcTimeout
from gateway.auth import bound_owner
from gateway.deps import DEPS
from gateway.errors import ApiError, invalid
from gateway.jsonbody import read_json
from gateway.repo.clusters import cluster_members, list_clusters
from gateway.views import parse_id, scope

CHANGE: TypeAdapter[Change] = TypeAdapter(Change)
THUMBNAILS_PER_CLUSTER = 4
MAX_BODY = 64 * 1024


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}")
    return value


def _member_json(row: Any) -> dict[str, Any]:
    upload_id = str(row["upload_id"])
    return {
        "system_id": upload_id,
        "content_id": str(row["content_id"]),
        "filename": row["filename"],
        "kind": row["kind"],
        "mime_type": row["mime_type"],
        "owner": row["owner"],
        "created_at": row["created_at"].isoformat(),
        "content_url": f"/api/v1/objects/{upload_id}/content",
        "thumbnail_url": f"/api/v1/objects/{upload_id}/thumbnail" if row["thumbnail_key"] else None,
    }


async def handle_clusters(request: web.Request) -> web.Response:
    """Clusters, newest first: filter by `provisional` and `model_id` (by default the active
    model's: a model switch's standby clusters are shown once it flips); a few thumbnails each.

    A key bound to an owner sees the clusters that hold its uploads, as its members make them
    (gateway/repo/clusters.py says what of a cluster it sees)."""
    limit = int_param(request, "limit", 50, 1, 100)
    offset = int_param(request, "offset", 0, 0, 1_000_000)
    provisional = request.query.get("provisional")
    if provisional not in (None, "true", "false"):
        raise ApiError(400, "provisional must be true or false")
    pool = request.app[DEPS].pool
    model_id = request.query.get("model_id")
    if model_id is None:
        active = await active_model(pool)
        model_id = active[0] if active else None
    page = await list_clusters(
        pool,
        scope(request),
        None if provisional is None else provisional == "true",
        model_id,
        limit,
        offset,
        THUMBNAILS_PER_CLUSTER,
    )
    clusters = [
        {
            **cluster_json(r),
            "thumbnails": [
                f"/api/v1/objects/{upload_id}/thumbnail"
                for upload_id in page.thumbnails.get(r["id"], [])
            ],
        }
        for r in page.clusters
    ]
    return web.json_response(
        {"clusters": clusters, "total": page.total, "limit": limit, "offset": offset}
    )


async def handle_cluster(request: web.Request) -> web.Response:
    """One cluster and its members (one per upload, oldest first), paged."""
    cluster_id = parse_id(request, "cluster_id", "cluster id")
    limit = int_param(request, "limit", 50, 1, 500)
    offset = int_param(request, "offset", 0, 0, 10_000_000)
    found = await cluster_members(request.app[DEPS].pool, scope(request), cluster_id, limit, offset)
    if found is None:
        raise ApiError(404, "cluster not found")
    return web.json_response(
        {
            **cluster_json(found.cluster),
            "members": [_member_json(m) for m in found.members],
            "members_total": found.total,
            "limit": limit,
            "offset": offset,
        }
    )


async def handle_patch_cluster(request: web.Request) -> web.Response:
    """rename, merge, update_threshold, confirm or reject, carried out by the clusterer."""
    deps = request.app[DEPS]
    cluster_id = parse_id(request, "cluster_id", "cluster id")
    if bound_owner(request) is not None:
        # Clusters hold every owner's uploads: changing one is for an unbound admin key.
        raise ApiError(403, "changing clusters needs an admin key not bound to an owner")
    body = await read_json(request, MAX_BODY)
    try:
        change = CHANGE.validate_python(body)
    except ValidationError as error:
        raise invalid("cluster change", error) from None
    command = ClusterCommand(cluster_id=cluster_id, actor="admin", change=change)
    try:
        # A broker that is down answers 503 through the request middleware.
        raw_reply = await deps.cluster_commands.call(command.model_dump_json().encode())
    except RpcTimeout:
        raise ApiError(
            504,
            "the clusterer did not answer in time; the change may still be applied",
        ) from None
    reply = ClusterCommandReply.model_validate_json(raw_reply)
    if reply.status != 200:
        raise ApiError(reply.status, reply.error or "the command failed", reply.details)
    return web.json_response(reply.cluster)
