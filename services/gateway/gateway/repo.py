"""The gateway's SQL: the ingest transaction, job status and object lookups."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from common.messages import Event, JsonIngested, MediaIngested
from common.outbox import trace_headers


@dataclass(frozen=True)
class NewUpload:
    """One validated, stored upload waiting to be recorded."""

    sha256: str
    kind: str
    mime_type: str
    size_bytes: int
    storage_key: str | None
    filename: str | None
    document: bytes | None = None  # canonical JSON, for kind "json"


@dataclass(frozen=True)
class IngestRecord:
    job_id: uuid.UUID
    upload_ids: list[uuid.UUID]
    stages: list[tuple[str, str]]  # (kind, stage) per upload
    created_at: datetime


class IdempotencyHit(Exception):
    """The idempotency key was used before; carries what was stored for it."""

    def __init__(self, job_id: uuid.UUID, request_hash: str, response: dict[str, Any]) -> None:
        super().__init__(str(job_id))
        self.job_id = job_id
        self.request_hash = request_hash
        self.response = response


def _event_for(content_id: uuid.UUID, job_id: uuid.UUID, item: NewUpload) -> Event:
    if item.kind == "json":
        return JsonIngested(
            content_id=content_id, job_id=job_id, sha256=item.sha256, size_bytes=item.size_bytes
        )
    return MediaIngested(
        content_id=content_id,
        job_id=job_id,
        sha256=item.sha256,
        kind=item.kind,  # type: ignore[arg-type]
        mime_type=item.mime_type,
        size_bytes=item.size_bytes,
    )


# One statement records a whole request. Content is upserted with a no-op update so that rows
# already stored, or committed meanwhile by a concurrent twin (the statement waits on the
# unique key), come back with their own id and stage. Events were built with the ids proposed
# for new rows, so only content this statement created gets one.
_INGEST_SQL = """
WITH job AS (
    INSERT INTO jobs (id, owner, request_id, trace_id) VALUES ($1, $2, $3, $4)
    RETURNING created_at
), c AS (
    INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key, document,
                         first_job_id)
    SELECT t.id, t.sha256, t.kind, t.mime, t.size, t.key, t.doc::jsonb, $1
    FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[],
                $11::text[]) AS t(id, sha256, kind, mime, size, key, doc)
    ORDER BY t.sha256
    ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256
    RETURNING id, sha256, kind, stage
), u AS (
    INSERT INTO uploads (id, job_id, content_id, owner, filename, comments, position)
    SELECT t.id, $1, c.id, $2, t.filename, $12, t.position
    FROM unnest($13::uuid[], $14::text[], $15::text[], $16::int[])
         AS t(id, sha256, filename, position)
    JOIN c ON c.sha256 = t.sha256
), o AS (
    INSERT INTO outbox (message_id, routing_key, body, headers)
    SELECT e.message_id, e.routing_key, e.body, $17::text::jsonb
    FROM unnest($18::uuid[], $19::text[], $20::bytea[], $21::uuid[])
         AS e(message_id, routing_key, body, content_id)
    JOIN c ON c.id = e.content_id
)
SELECT (SELECT created_at FROM job) AS created_at, sha256, kind, stage FROM c
"""


async def record_ingest(
    conn: asyncpg.Connection,
    *,
    owner: str,
    comments: str | None,
    request_id: str,
    trace_id: str | None,
    items: list[NewUpload],
    idempotency: tuple[str, str, str] | None,
    response_for: Callable[[IngestRecord], dict[str, Any]],
    place_files: Callable[[], Awaitable[None]],
) -> IngestRecord:
    """Record a request: job, content (deduplicated by sha256), uploads and events, atomically.

    Exact duplicates are decided by the unique key on content.sha256: of two concurrent
    requests with the same bytes, one inserts the row and its event, the other waits on the
    key and finds the row. Files are placed before the rows become visible, so no reader sees
    a row whose file is missing. With an idempotency key (scope, key, request hash) the key is
    claimed first in the same transaction, so a refused request leaves no file behind.
    """
    job_id = uuid.uuid4()
    upload_ids = [uuid.uuid4() for _ in items]
    by_sha = {item.sha256: item for item in items}
    ordered = sorted(by_sha)  # one lock order: concurrent requests never deadlock
    proposed = {sha: uuid.uuid4() for sha in ordered}
    events = [_event_for(proposed[s], job_id, by_sha[s]) for s in ordered]
    args = (
        job_id, owner, request_id, trace_id,
        [proposed[s] for s in ordered],
        ordered,
        [by_sha[s].kind for s in ordered],
        [by_sha[s].mime_type for s in ordered],
        [by_sha[s].size_bytes for s in ordered],
        [by_sha[s].storage_key for s in ordered],
        [_text(by_sha[s].document) for s in ordered],
        comments,
        upload_ids,
        [i.sha256 for i in items],
        [i.filename for i in items],
        list(range(len(items))),
        orjson.dumps(trace_headers()).decode(),
        [e.message_id for e in events],
        [e.routing_key for e in events],
        [e.to_bytes() for e in events],
        [proposed[s] for s in ordered],
    )

    def record_from(rows: list[asyncpg.Record]) -> IngestRecord:
        content = {row["sha256"]: row for row in rows}
        stages = [(content[i.sha256]["kind"], content[i.sha256]["stage"]) for i in items]
        return IngestRecord(job_id, upload_ids, stages, rows[0]["created_at"])

    if idempotency is None:
        await place_files()
        return record_from(await conn.fetch(_INGEST_SQL, *args))
    async with conn.transaction():
        await _claim_idempotency_key(conn, idempotency, job_id)
        await place_files()
        record = record_from(await conn.fetch(_INGEST_SQL, *args))
        await conn.execute(
            "UPDATE idempotency_keys SET response = $3::text::jsonb WHERE scope = $1 AND key = $2",
            idempotency[0],
            idempotency[1],
            orjson.dumps(response_for(record)).decode(),
        )
    return record


def _text(document: bytes | None) -> str | None:
    return document.decode() if document is not None else None


async def _claim_idempotency_key(
    conn: asyncpg.Connection, idempotency: tuple[str, str, str], job_id: uuid.UUID
) -> None:
    scope, key, request_hash = idempotency
    claimed = await conn.fetchval(
        """INSERT INTO idempotency_keys (scope, key, request_hash, job_id, response)
           VALUES ($1, $2, $3, $4, '{}') ON CONFLICT (scope, key) DO NOTHING RETURNING 1""",
        scope,
        key,
        request_hash,
        job_id,
    )
    if claimed:
        return
    # Another request holds the key; it committed before ON CONFLICT let us through.
    row = await conn.fetchrow(
        "SELECT job_id, request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope,
        key,
    )
    assert row is not None
    raise IdempotencyHit(row["job_id"], row["request_hash"], row["response"])


async def job_with_uploads(conn: asyncpg.Connection | asyncpg.Pool, job_id: uuid.UUID) -> list[
    asyncpg.Record
]:
    """The job's uploads joined with their content; empty when the job is unknown."""
    return await conn.fetch(
        """SELECT j.id AS job_id, j.owner, j.trace_id, j.created_at, j.request_id,
                  u.id AS upload_id, u.filename, u.position,
                  c.id AS content_id, c.sha256, c.kind, c.mime_type, c.size_bytes,
                  c.stage, c.error, c.stage_updated_at
           FROM jobs j JOIN uploads u ON u.job_id = j.id JOIN content c ON c.id = u.content_id
           WHERE j.id = $1 ORDER BY u.position""",
        job_id,
    )


async def upload_with_content(
    conn: asyncpg.Connection | asyncpg.Pool, upload_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT u.id AS upload_id, u.job_id, u.owner, u.filename, u.comments, u.created_at,
                  c.id AS content_id, c.sha256, c.kind, c.mime_type, c.size_bytes, c.storage_key,
                  c.stage, c.error, c.width, c.height, c.format, c.tags, c.cluster_id,
                  c.near_duplicate_of, c.analysis
           FROM uploads u JOIN content c ON c.id = u.content_id WHERE u.id = $1""",
        upload_id,
    )
