"""Jobs and stored objects as a request sees them; the sweeper's lock (objects' locks and
references live in common/objects.py, shared with the embedder and the purge)."""

from __future__ import annotations

import uuid
from typing import TypeAlias

import asyncpg

from common.objects import lock_objects as lock_objects
from common.objects import referenced_keys as referenced_keys
from gateway.repo.clusters import cluster_name
from gateway.repo.scope import OwnerScope, Statement

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


def _upload_stage(q: Statement, json_queue: str) -> str:
    """Columns `stage`, `error`, `stage_updated_at` and `document` of an upload `u` of content
    `c`. A JSON upload's stage is its own (a document belongs to its upload): stored once the
    schemer placed it, failed while its job's JSON event lies in the dead letters (a requeue
    takes that back), ingested before."""
    queue = q.param(json_queue)
    return f"""
        CASE WHEN c.kind <> 'json' THEN c.stage
             WHEN d.upload_id IS NOT NULL THEN 'stored'
             WHEN dl.error IS NOT NULL THEN 'failed' ELSE 'ingested' END AS stage,
        CASE WHEN c.kind <> 'json' THEN c.error ELSE dl.error END AS error,
        CASE WHEN c.kind <> 'json' THEN c.stage_updated_at
             ELSE coalesce(d.placed_at, d.created_at, dl.created_at, u.created_at)
        END AS stage_updated_at,
        CASE WHEN d.upload_id IS NULL THEN NULL
             ELSE jsonb_build_object('collection', jc.name, 'collection_id', jc.id,
                                     'placement', d.placement, 'row_id', d.row_id,
                                     'table', jc.table_name, 'overflow', d.overflow)
        END AS document
      FROM uploads u JOIN content c ON c.id = u.content_id
      LEFT JOIN json_documents d ON d.upload_id = u.id
      LEFT JOIN json_collections jc ON jc.id = d.collection_id
      LEFT JOIN LATERAL (
          SELECT x.error, x.created_at FROM dead_letters x
          WHERE c.kind = 'json' AND d.upload_id IS NULL AND x.job_id = u.job_id
            AND x.queue = {queue} AND x.requeued_at IS NULL
          ORDER BY x.created_at DESC LIMIT 1) dl ON true"""


async def job_with_uploads(
    conn: Conn, scope: OwnerScope, job_id: uuid.UUID, json_queue: str
) -> list[asyncpg.Record]:
    """The job's uploads joined with their content; empty when the job is unknown or not the
    scope's. `json_queue` is the schemer's queue, whose dead letters fail JSON uploads."""
    q = Statement()
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT j.id AS job_id, j.owner, j.trace_id, j.trace_sampled, j.created_at,
                   j.received_at, j.request_id,
                   u.id AS upload_id, u.filename, u.position,
                   c.id AS content_id, c.sha256, c.kind, c.mime_type, c.size_bytes,
                   c.first_job_id,
                   {_upload_stage(q, json_queue)}
            JOIN jobs j ON j.id = u.job_id
            WHERE j.id = {q.param(job_id)} AND {scope.owns(q, "j.owner")}
            ORDER BY u.position""",
        *q.args,
    )
    return rows


async def upload_with_content(
    conn: Conn, scope: OwnerScope, upload_id: uuid.UUID, json_queue: str
) -> asyncpg.Record | None:
    """One upload and its content's facts: its embeddings (model and dimension), its cluster
    (with the name the scope may see), for JSON where its document went; None when unknown or
    not the scope's."""
    q = Statement()
    return await conn.fetchrow(
        f"""SELECT u.id AS upload_id, u.job_id, u.owner, u.filename, u.comments, u.created_at,
                   c.id AS content_id, c.sha256, c.kind, c.mime_type, c.size_bytes,
                   c.storage_key, c.width, c.height, c.format, c.tags,
                   c.cluster_id, c.near_duplicate_of, c.analysis,
                   {cluster_name(q, scope, "c.cluster_id")} AS cluster_name,
                   (SELECT coalesce(jsonb_agg(jsonb_build_object('model_id', e.model_id,
                                                                 'dim', m.dim)
                                              ORDER BY e.created_at), '[]')
                    FROM embeddings e JOIN models m ON m.id = e.model_id
                    WHERE e.content_id = c.id) AS embeddings,
                   {_upload_stage(q, json_queue)}
            WHERE u.id = {q.param(upload_id)} AND {scope.owns(q, "u.owner")}""",
        *q.args,
    )


async def document_of(conn: Conn, scope: OwnerScope, upload_id: uuid.UUID) -> str | None:
    """The JSON document of an upload, as text; None when there is none the scope may see."""
    q = Statement()
    document: str | None = await conn.fetchval(
        f"""SELECT c.document::text FROM uploads u JOIN content c ON c.id = u.content_id
            WHERE u.id = {q.param(upload_id)} AND {scope.owns(q, "u.owner")}""",
        *q.args,
    )
    return document


async def thumbnail_of(
    conn: Conn, scope: OwnerScope, upload_id: uuid.UUID
) -> asyncpg.Record | None:
    """The upload's thumbnail key (None until there is one); None when the scope may not see it."""
    q = Statement()
    return await conn.fetchrow(
        f"""SELECT c.thumbnail_key FROM uploads u JOIN content c ON c.id = u.content_id
            WHERE u.id = {q.param(upload_id)} AND {scope.owns(q, "u.owner")}""",
        *q.args,
    )


async def take_singleton_lock(conn: asyncpg.Connection, name: str, wait: bool) -> bool:
    """Take the lock that lets one process across gateways run the job `name` (the sweeper,
    retention) for this transaction: wait for it, or try once."""
    if wait:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", name)
        return True
    taken: bool = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", name
    )
    return taken
