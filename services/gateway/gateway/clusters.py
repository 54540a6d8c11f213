"""Clusters: listed and shown from the database; changed by commands the clusterer carries out.

PATCH waits for the clusterer's answer (up to CLUSTER_COMMAND_TIMEOUT_S) and answers with the
result: 200, or 404/400/409 as the clusterer decided. 504 means no answer in time; the command
may still be carried out later, so look at the cluster before sending it again.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from common.cluster_commands import Change, ClusterCommand, ClusterCommandReply
from common.clusters import CLUSTER_COLUMNS, cluster_json
from common.rpc import RpcTimeout
from gateway.auth import bound_owner
from gateway.deps import DEPS
from gateway.errors import ApiError, invalid
from gateway.jsonbody import read_json
from gateway.views import parse_id

CHANGE: TypeAdapter[Change] = TypeAdapter(Change)
# Does the cluster hold an upload of the owner? Formatted with SQL for both.
_OWNED = """SELECT 1 FROM content oc JOIN uploads ou ON ou.content_id = oc.id
            WHERE oc.cluster_id = {cluster} AND ou.owner = {owner}"""
THUMBNAILS_PER_CLUSTER = 4
MAX_BODY = 64 * 1024


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
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
    """Clusters, newest first: filter by `provisional` and `model_id`; a few thumbnails each."""
    pool = request.app[DEPS].pool
    limit = _int_param(request, "limit", 50, 1, 100)
    offset = _int_param(request, "offset", 0, 0, 1_000_000)
    provisional = request.query.get("provisional")
    if provisional not in (None, "true", "false"):
        raise ApiError(400, "provisional must be true or false")
    model_id = request.query.get("model_id")
    owner = bound_owner(request)
    # A key bound to an owner sees the clusters that hold its uploads, and only its thumbnails.
    owned = _OWNED.format(cluster="clusters.id", owner="$3")
    where = f"""WHERE ($1::boolean IS NULL OR provisional = $1)
                  AND ($2::text IS NULL OR model_id = $2)
                  AND ($3::text IS NULL OR EXISTS ({owned}))"""
    args = (None if provisional is None else provisional == "true", model_id, owner)
    total = await pool.fetchval(f"SELECT count(*) FROM clusters {where}", *args)
    rows = await pool.fetch(
        f"""SELECT {CLUSTER_COLUMNS} FROM clusters {where}
            ORDER BY created_at DESC, id LIMIT $4 OFFSET $5""",
        *args,
        limit,
        offset,
    )
    ids = [r["id"] for r in rows]
    thumbs = await pool.fetch(
        """SELECT cluster_id, upload_id FROM (
               SELECT c.cluster_id, u.id AS upload_id,
                      row_number() OVER (PARTITION BY c.cluster_id ORDER BY u.created_at, u.id) AS n
               FROM content c JOIN uploads u ON u.content_id = c.id
               WHERE c.cluster_id = ANY($1::uuid[]) AND c.thumbnail_key IS NOT NULL
                 AND ($3::text IS NULL OR u.owner = $3)
           ) t WHERE n <= $2""",
        ids,
        THUMBNAILS_PER_CLUSTER,
        owner,
    )
    by_cluster: dict[uuid.UUID, list[str]] = {}
    for t in thumbs:
        by_cluster.setdefault(t["cluster_id"], []).append(
            f"/api/v1/objects/{t['upload_id']}/thumbnail"
        )
    clusters = [{**cluster_json(r), "thumbnails": by_cluster.get(r["id"], [])} for r in rows]
    return web.json_response(
        {"clusters": clusters, "total": total, "limit": limit, "offset": offset}
    )


async def handle_cluster(request: web.Request) -> web.Response:
    """One cluster and its members (one per upload, oldest first), paged."""
    pool = request.app[DEPS].pool
    cluster_id = parse_id(request, "cluster_id", "cluster id")
    limit = _int_param(request, "limit", 50, 1, 500)
    offset = _int_param(request, "offset", 0, 0, 10_000_000)
    owner = bound_owner(request)
    owned = _OWNED.format(cluster="$1", owner="$2")
    row = await pool.fetchrow(
        f"""SELECT {CLUSTER_COLUMNS} FROM clusters
            WHERE id = $1 AND ($2::text IS NULL OR EXISTS ({owned}))""",
        cluster_id,
        owner,
    )
    if row is None:
        raise ApiError(404, "cluster not found")
    total = await pool.fetchval(
        """SELECT count(*) FROM content c JOIN uploads u ON u.content_id = c.id
           WHERE c.cluster_id = $1 AND ($2::text IS NULL OR u.owner = $2)""",
        cluster_id,
        owner,
    )
    members = await pool.fetch(
        """SELECT u.id AS upload_id, u.filename, u.owner, u.created_at, c.id AS content_id,
                  c.kind, c.mime_type, c.thumbnail_key
           FROM content c JOIN uploads u ON u.content_id = c.id
           WHERE c.cluster_id = $1 AND ($4::text IS NULL OR u.owner = $4)
           ORDER BY u.created_at, u.id LIMIT $2 OFFSET $3""",
        cluster_id,
        limit,
        offset,
        owner,
    )
    return web.json_response(
        {
            **cluster_json(row),
            "members": [_member_json(m) for m in members],
            "members_total": total,
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
