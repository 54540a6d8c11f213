"""The gateway's SQL: the ingest transaction, job status and object lookups."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import asyncpg
import orjson

from common.messages import Event, JsonIngested, MediaIngested, MediaUploaded
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
        kind=item.kind,
        mime_type=item.mime_type,
        size_bytes=item.size_bytes,
    )


@dataclass(frozen=True)
class IngestRequest:
    """What one accepted request will write."""

    owner: str
    comments: str | None
    request_id: str
    trace_id: str | None
    items: list[NewUpload]
    job_id: uuid.UUID = field(default_factory=uuid.uuid4)
    headers: str = field(default_factory=lambda: orjson.dumps(trace_headers()).decode())

    @cached_property
    def upload_ids(self) -> list[uuid.UUID]:
        return [uuid.uuid4() for _ in self.items]


# One statement records a batch of requests (group commit: one WAL flush for many 202s).
# Content is upserted with a no-op update so that rows already stored, or committed meanwhile
# by a concurrent twin (the statement waits on the unique key), come back with their own id
# and stage. Events were built with the ids proposed for new rows, so only content this
# statement created gets one.
_INGEST_SQL = """
WITH job AS (
    INSERT INTO jobs (id, owner, request_id, trace_id)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
    RETURNING id, created_at
), c AS (
    INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key, document,
                         first_job_id)
    SELECT t.id, t.sha256, t.kind, t.mime, t.size, t.key, t.doc::jsonb, t.job_id
    FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[],
                $11::text[], $12::uuid[]) AS t(id, sha256, kind, mime, size, key, doc, job_id)
    -- The stored objects' locks (see lock_objects), all taken before any content row is.
    WHERE (SELECT count(pg_advisory_xact_lock(hashtextextended('mammothbox.object:' || s, 0)))
           FROM unnest($27::text[]) AS s) >= 0
    ORDER BY t.sha256
    ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256
    RETURNING id, sha256, kind, stage
), u AS (
    INSERT INTO uploads (id, job_id, content_id, owner, filename, comments, position)
    SELECT t.id, t.job_id, c.id, t.owner, t.filename, t.comments, t.position
    FROM unnest($13::uuid[], $14::uuid[], $15::text[], $16::text[], $17::text[], $18::text[],
                $19::int[]) AS t(id, job_id, sha256, owner, filename, comments, position)
    JOIN c ON c.sha256 = t.sha256
    RETURNING id, job_id, content_id
), o AS (
    INSERT INTO outbox (message_id, routing_key, body, headers)
    SELECT e.message_id, e.routing_key, e.body, e.headers::jsonb
    FROM unnest($20::uuid[], $21::text[], $22::bytea[], $23::text[], $24::uuid[])
         AS e(message_id, routing_key, body, headers, content_id)
    JOIN c ON c.id = e.content_id
), d AS (
    -- A new upload of media stored before needs only its link in the cluster's folder.
    INSERT INTO outbox (message_id, routing_key, body, headers)
    SELECT x.mid, $26,
           convert_to(json_build_object('message_id', x.mid, 'schema_version', 1,
                                        'upload_id', x.id, 'content_id', x.content_id,
                                        'job_id', x.job_id)::text, 'UTF8'),
           h.headers::jsonb
    FROM (SELECT gen_random_uuid() AS mid, u.id, u.job_id, u.content_id
          FROM u JOIN c ON c.id = u.content_id
          WHERE c.kind <> 'json' AND c.id <> ALL($5::uuid[])) AS x
    JOIN unnest($1::uuid[], $25::text[]) AS h(job_id, headers) ON h.job_id = x.job_id
)
SELECT id::text AS key, created_at, NULL AS kind, NULL AS stage FROM job
UNION ALL
SELECT sha256, NULL, kind, stage FROM c
"""


async def write_ingests(
    conn: asyncpg.Connection | asyncpg.Pool, requests: list[IngestRequest]
) -> list[IngestRecord]:
    """Record requests in one statement: jobs, content (deduplicated by sha256), uploads,
    events for new content and a media.uploaded event for each new upload of stored media.
    Exact duplicates are decided by the unique key on content.sha256, within the batch and
    against concurrent writers, never by a race between workers. The statement first takes
    the locks of the stored objects (lock_objects), held until the transaction ends.
    """
    content: dict[str, tuple[uuid.UUID, NewUpload, uuid.UUID]] = {}
    for request in requests:
        for item in request.items:
            content.setdefault(item.sha256, (uuid.uuid4(), item, request.job_id))
    ordered = sorted(content)  # one lock order: concurrent batches never deadlock
    headers = {r.job_id: r.headers for r in requests}
    events = [
        (_event_for(cid, job_id, item), cid, headers[job_id])
        for cid, item, job_id in (content[s] for s in ordered)
    ]
    uploads = [
        (upload_id, r.job_id, item.sha256, r.owner, item.filename, r.comments, position)
        for r in requests
        for position, (upload_id, item) in enumerate(zip(r.upload_ids, r.items, strict=True))
    ]
    rows = await conn.fetch(
        _INGEST_SQL,
        [r.job_id for r in requests],
        [r.owner for r in requests],
        [r.request_id for r in requests],
        [r.trace_id for r in requests],
        [content[s][0] for s in ordered],
        ordered,
        [content[s][1].kind for s in ordered],
        [content[s][1].mime_type for s in ordered],
        [content[s][1].size_bytes for s in ordered],
        [content[s][1].storage_key for s in ordered],
        [_text(content[s][1].document) for s in ordered],
        [content[s][2] for s in ordered],
        *(list(column) for column in zip(*uploads, strict=True)),
        [e.message_id for e, _, _ in events],
        [e.routing_key for e, _, _ in events],
        [e.to_bytes() for e, _, _ in events],
        [h for _, _, h in events],
        [cid for _, cid, _ in events],
        [r.headers for r in requests],
        MediaUploaded.routing_key,
        [s for s in ordered if content[s][1].storage_key is not None],
    )
    created = {row["key"]: row["created_at"] for row in rows if row["created_at"] is not None}
    stages = {row["key"]: (row["kind"], row["stage"]) for row in rows if row["kind"] is not None}
    return [
        IngestRecord(
            r.job_id, r.upload_ids, [stages[i.sha256] for i in r.items], created[str(r.job_id)]
        )
        for r in requests
    ]


# The lock of one stored object, keyed on its sha256; the storage sweeper takes it too
# (gateway/sweep.py). Taken in sha256 order (the array comes sorted, unnest keeps its order)
# so that concurrent ingests never deadlock on each other.
_LOCK_OBJECTS = """
SELECT count(pg_advisory_xact_lock(hashtextextended('mammothbox.object:' || s, 0)))
FROM unnest($1::text[]) AS s
"""


async def lock_objects(conn: asyncpg.Connection, sha256s: Iterable[str]) -> None:
    """Take the locks of these stored objects until the transaction ends.

    Rows read after this (in a later statement: READ COMMITTED takes each statement's
    snapshot at its start) see whatever a holder of the lock committed before.
    """
    ordered = sorted(set(sha256s))
    if ordered:
        await conn.fetchval(_LOCK_OBJECTS, ordered)


def _stored(requests: Iterable[IngestRequest]) -> set[str]:
    return {item.sha256 for r in requests for item in r.items if item.storage_key is not None}


async def record_ingests(
    conn: asyncpg.Connection,
    requests: list[IngestRequest],
    ensure_placed: Iterable[Callable[[], Awaitable[None]]],
) -> list[IngestRecord]:
    """Record requests whose files were placed beforehand, in one transaction: write
    (the statement takes their objects' locks first), then, holding the locks, put back any
    file the sweeper removed since it was placed (it found no row then), then commit.
    JSON-only requests need neither locks nor a transaction of their own."""
    if not _stored(requests):
        return await write_ingests(conn, requests)
    async with conn.transaction():
        records = await write_ingests(conn, requests)  # takes the objects' locks first
        for ensure in ensure_placed:
            await ensure()
    return records


async def write_ingest_with_key(
    conn: asyncpg.Connection,
    request: IngestRequest,
    idempotency: tuple[str, str, str],
    response_for: Callable[[IngestRecord], dict[str, Any]],
    place_files: Callable[[], Awaitable[None]],
) -> IngestRecord:
    """Claim the idempotency key (scope, key, request hash) and record, in one transaction.

    The key is claimed before the files are placed, so a refused request leaves no file;
    the files are placed under their objects' locks, so the sweeper cannot take them.
    """
    async with conn.transaction():
        await _claim_idempotency_key(conn, idempotency, request.job_id)
        await lock_objects(conn, _stored([request]))
        await place_files()
        [record] = await write_ingests(conn, [request])
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


async def job_with_uploads(
    conn: asyncpg.Connection | asyncpg.Pool, job_id: uuid.UUID
) -> list[asyncpg.Record]:
    """The job's uploads joined with their content; empty when the job is unknown."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT j.id AS job_id, j.owner, j.trace_id, j.created_at, j.request_id,
                  u.id AS upload_id, u.filename, u.position,
                  c.id AS content_id, c.sha256, c.kind, c.mime_type, c.size_bytes,
                  c.stage, c.error, c.stage_updated_at
           FROM jobs j JOIN uploads u ON u.job_id = j.id JOIN content c ON c.id = u.content_id
           WHERE j.id = $1 ORDER BY u.position""",
        job_id,
    )
    return rows


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


async def referenced_keys(conn: asyncpg.Connection | asyncpg.Pool, keys: list[str]) -> set[str]:
    """The storage keys among `keys` that a row refers to: content (its storage key is
    `key_for(sha256)`, found through the sha256 key), a thumbnail, a video frame."""
    rows = await conn.fetch(
        """SELECT k FROM unnest($1::text[]) AS k
           WHERE EXISTS (SELECT FROM content c
                         WHERE c.sha256 = right(k, 64) AND c.storage_key = k)
              OR EXISTS (SELECT FROM content c WHERE c.thumbnail_key = k)
              OR EXISTS (SELECT FROM video_frames f WHERE f.storage_key = k)""",
        keys,
    )
    return {row["k"] for row in rows}
