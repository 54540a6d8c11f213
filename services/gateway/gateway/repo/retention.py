"""Which uploads a retention policy has made due, and deleting them.

An upload is due at `as_of` when the most specific rule naming it (its JSON collection, its
owner, its kind, the default: gateway/retention_policy.py) keeps it a positive number of days
and it was uploaded longer ago than that. The listing and the deletion use this one predicate,
so a dry run at an instant lists exactly what a run at that instant deletes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from common.messages import DELETED_UPLOADS_PER_EVENT
from gateway.repo.deletion import Deleted, delete_where
from gateway.repo.scope import OwnerScope, Statement
from gateway.retention_policy import RetentionPolicy


@dataclass(frozen=True)
class Due:
    """A count of the uploads due, by the rule that made them so."""

    total: int
    by_rule: dict[str, int]


def _due(q: Statement, policy: RetentionPolicy, as_of: datetime, scope: OwnerScope) -> str:
    """FROM and WHERE of the uploads due (aliases u, c, r: r.rule and r.days decide)."""
    shortest = policy.shortest_days
    assert shortest is not None
    at = q.param(as_of, "timestamptz")
    collection = "CASE WHEN c.kind = 'json' THEN coalesce(jc.name, j.collection) END"
    return f"""
        FROM uploads u
        JOIN content c ON c.id = u.content_id
        JOIN jobs j ON j.id = u.job_id
        LEFT JOIN json_documents d ON d.upload_id = u.id
        LEFT JOIN json_collections jc ON jc.id = d.collection_id
        CROSS JOIN LATERAL (
            SELECT v.rule, v.days FROM (VALUES
                (1, 'collection:' || {collection},
                    ({q.param(policy.collections, "jsonb")} ->> {collection})::float8),
                (2, 'owner:' || u.owner,
                    ({q.param(policy.owners, "jsonb")} ->> u.owner)::float8),
                (3, 'kind:' || c.kind,
                    ({q.param(policy.kinds, "jsonb")} ->> c.kind)::float8),
                (4, 'default', {q.param(policy.default_days, "float8")})
            ) AS v(precedence, rule, days)
            WHERE v.days IS NOT NULL ORDER BY v.precedence LIMIT 1
        ) r
        WHERE u.created_at < {at} - {q.param(shortest, "float8")} * interval '1 day'
          AND r.days > 0 AND u.created_at < {at} - r.days * interval '1 day'
          AND {scope.owns(q, "u.owner")}"""


async def count_due(
    conn: asyncpg.Connection, policy: RetentionPolicy, as_of: datetime, scope: OwnerScope
) -> Due:
    if policy.shortest_days is None:
        return Due(0, {})
    q = Statement()
    rows = await conn.fetch(
        f"SELECT r.rule, count(*) AS n {_due(q, policy, as_of, scope)} GROUP BY r.rule", *q.args
    )
    by_rule = {r["rule"]: r["n"] for r in sorted(rows, key=lambda r: r["rule"])}
    return Due(sum(by_rule.values()), by_rule)


async def list_due(
    conn: asyncpg.Connection,
    policy: RetentionPolicy,
    as_of: datetime,
    scope: OwnerScope,
    *,
    after: uuid.UUID | None,
    limit: int,
) -> list[dict[str, Any]]:
    """One page of the uploads due, in id order, after the upload `after`."""
    if policy.shortest_days is None:
        return []
    q = Statement()
    due = _due(q, policy, as_of, scope)
    page = "" if after is None else f"AND u.id > {q.param(after)}"
    rows = await conn.fetch(
        f"""SELECT u.id, u.owner, c.kind, jc.name AS collection, j.collection AS requested,
                   u.created_at, r.rule, r.days
            {due} {page} ORDER BY u.id LIMIT {q.param(limit)}""",
        *q.args,
    )
    return [
        {
            "system_id": str(r["id"]),
            "owner": r["owner"],
            "kind": r["kind"],
            "collection": r["collection"] or (r["requested"] if r["kind"] == "json" else None),
            "created_at": r["created_at"].isoformat(),
            "rule": r["rule"],
            "days": r["days"],
        }
        for r in rows
    ]


async def delete_due_batch(
    conn: asyncpg.Connection,
    policy: RetentionPolicy,
    as_of: datetime,
    scope: OwnerScope,
    actor: str,
    after: uuid.UUID | None = None,
) -> Deleted:
    """Delete up to one event's worth of the uploads due, in id order after the upload
    `after` (a run walks the uploads once instead of scanning them again per batch), in one
    transaction."""
    if policy.shortest_days is None:
        return Deleted()
    q = Statement()
    due = _due(q, policy, as_of, scope)
    page = "" if after is None else f"AND u.id > {q.param(after)}"
    limit = q.param(DELETED_UPLOADS_PER_EVENT)
    where = f"u.id IN (SELECT u.id {due} {page} ORDER BY u.id LIMIT {limit})"
    return await delete_where(
        conn, q, where, actor=actor, reason="retention", limit=DELETED_UPLOADS_PER_EVENT
    )
