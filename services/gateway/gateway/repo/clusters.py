"""Clusters as a request sees them.

Clusters are global (content is processed once, and filed once), but what a key bound to an
owner sees of one is computed from that owner's members only: the clusters listed are those
holding one of its uploads, `member_count` counts its content there, thumbnails and members
are its uploads. The name is shown to it only when the owner could not learn another owner's
content from it: when an admin gave it (name_source `admin`: a rename) or accepted it (a
confirmed cluster), or when the content it was made from is the owner's own. The clusterer
names a cluster twice at most — its placeholder from the first member's embedding
(`cluster.create` in audit_log, `first_member`) and the VLM's suggestion from one member's
analysis (`cluster.name`, `content_id`) — and records which content each name came from;
the record must match the current name. Otherwise the key sees a neutral `cluster 1a2b3c4d`
(the id's first eight hex digits) with name_source `placeholder`. Unbound keys see the
cluster as stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from common.clusters import CLUSTER_COLUMNS, threshold_columns
from gateway.repo.scope import OwnerScope, Statement

# The content the cluster's current name was made from, if the clusterer recorded it.
_NAME_ORIGIN = """(SELECT coalesce(a.details->>'content_id', a.details->>'first_member')::uuid
    FROM audit_log a
    WHERE a.entity = 'cluster' AND a.entity_id = cl.id::text
      AND a.action IN ('cluster.create', 'cluster.name')
      AND coalesce(a.details->>'to', a.details->>'name') = cl.name
    ORDER BY a.at DESC, a.id DESC LIMIT 1)"""


@dataclass(frozen=True)
class ClusterPage:
    total: int
    clusters: list[asyncpg.Record]
    thumbnails: dict[uuid.UUID, list[uuid.UUID]]  # upload ids, by cluster


@dataclass(frozen=True)
class ClusterMembers:
    cluster: asyncpg.Record
    total: int
    members: list[asyncpg.Record]


_NEUTRAL_NAME = "'cluster ' || left(replace(cl.id::text, '-', ''), 8)"


def _name_shown(q: Statement, scope: OwnerScope) -> str:
    """Whether the bound scope may see the name of the cluster `cl` (see the module's words)."""
    return (
        f"cl.name_source = 'admin' OR NOT cl.provisional OR {scope.holds_content(q, _NAME_ORIGIN)}"
    )


def _view(q: Statement, scope: OwnerScope) -> str:
    """`SELECT <the cluster's columns as the scope sees them> FROM clusters cl ...`."""
    if not scope.bound:
        return f"SELECT {CLUSTER_COLUMNS} FROM clusters cl"
    return f"""SELECT cl.id, cl.model_id,
                      CASE WHEN v.shown THEN cl.name ELSE {_NEUTRAL_NAME} END AS name,
                      CASE WHEN v.shown THEN cl.name_source ELSE 'placeholder' END
                          AS name_source,
                      cl.provisional, {threshold_columns("cl.")},
                      (SELECT count(*) FROM content mc
                       WHERE mc.cluster_id = cl.id AND {scope.holds_content(q, "mc.id")})::int
                          AS member_count,
                      cl.created_at, cl.updated_at
               FROM clusters cl CROSS JOIN LATERAL (SELECT ({_name_shown(q, scope)}) AS shown) v"""


def _where(q: Statement, scope: OwnerScope, provisional: bool | None, model_id: str | None) -> str:
    conditions = [scope.holds_cluster(q, "cl.id")]
    if provisional is not None:
        conditions.append(f"cl.provisional = {q.param(provisional)}")
    if model_id is not None:
        conditions.append(f"cl.model_id = {q.param(model_id)}")
    return " AND ".join(conditions)


async def list_clusters(
    pool: asyncpg.Pool,
    scope: OwnerScope,
    provisional: bool | None,
    model_id: str | None,
    limit: int,
    offset: int,
    thumbnails: int,
) -> ClusterPage:
    """Clusters the scope holds uploads in, newest first, with up to `thumbnails` each."""
    q = Statement()
    total = await pool.fetchval(
        f"SELECT count(*) FROM clusters cl WHERE {_where(q, scope, provisional, model_id)}",
        *q.args,
    )
    q = Statement()
    view = _view(q, scope)
    where = _where(q, scope, provisional, model_id)
    rows = await pool.fetch(
        f"""{view} WHERE {where}
            ORDER BY cl.created_at DESC, cl.id LIMIT {q.param(limit)} OFFSET {q.param(offset)}""",
        *q.args,
    )
    q = Statement()
    ids = q.param([r["id"] for r in rows], "uuid[]")
    thumbs = await pool.fetch(
        f"""SELECT cluster_id, upload_id FROM (
               SELECT c.cluster_id, u.id AS upload_id,
                      row_number() OVER (PARTITION BY c.cluster_id ORDER BY u.created_at, u.id) AS n
               FROM content c JOIN uploads u ON u.content_id = c.id
               WHERE c.cluster_id = ANY({ids}) AND c.thumbnail_key IS NOT NULL
                 AND {scope.owns(q, "u.owner")}
           ) t WHERE n <= {q.param(thumbnails)}""",
        *q.args,
    )
    by_cluster: dict[uuid.UUID, list[uuid.UUID]] = {}
    for t in thumbs:
        by_cluster.setdefault(t["cluster_id"], []).append(t["upload_id"])
    return ClusterPage(total, rows, by_cluster)


async def cluster_members(
    pool: asyncpg.Pool, scope: OwnerScope, cluster_id: uuid.UUID, limit: int, offset: int
) -> ClusterMembers | None:
    """One cluster and its members the scope may see (one per upload, oldest first), paged;
    None when there is no such cluster, or the scope holds nothing in it."""
    q = Statement()
    view = _view(q, scope)
    row = await pool.fetchrow(
        f"{view} WHERE cl.id = {q.param(cluster_id)} AND {scope.holds_cluster(q, 'cl.id')}",
        *q.args,
    )
    if row is None:
        return None
    q = Statement()
    total = await pool.fetchval(
        f"""SELECT count(*) FROM content c JOIN uploads u ON u.content_id = c.id
            WHERE c.cluster_id = {q.param(cluster_id)} AND {scope.owns(q, "u.owner")}""",
        *q.args,
    )
    q = Statement()
    members = await pool.fetch(
        f"""SELECT u.id AS upload_id, u.filename, u.owner, u.created_at, c.id AS content_id,
                   c.kind, c.mime_type, c.thumbnail_key
            FROM content c JOIN uploads u ON u.content_id = c.id
            WHERE c.cluster_id = {q.param(cluster_id)} AND {scope.owns(q, "u.owner")}
            ORDER BY u.created_at, u.id LIMIT {q.param(limit)} OFFSET {q.param(offset)}""",
        *q.args,
    )
    return ClusterMembers(row, total, members)


def cluster_name(q: Statement, scope: OwnerScope, cluster: str) -> str:
    """The name of the cluster `cluster` (an id expression) as the scope sees it, for a search
    hit: the same rule as the views above."""
    name = "cl.name"
    if scope.bound:
        name = f"CASE WHEN {_name_shown(q, scope)} THEN cl.name ELSE {_NEUTRAL_NAME} END"
    return f"(SELECT {name} FROM clusters cl WHERE cl.id = {cluster})"
