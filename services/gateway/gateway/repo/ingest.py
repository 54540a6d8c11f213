"""The ingest transaction: jobs, content, uploads and their events, and idempotency keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import asyncpg
import orjson

from common.messages import (
    JSON_UPLOADS_PER_EVENT,
    JsonIngested,
    MediaIngested,
    MediaUploaded,
)
from common.outbox import trace_headers
from gateway.repo.objects import lock_objects
from gateway.repo.scope import Statement


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


def _media_event(content_id: uuid.UUID, job_id: uuid.UUID, item: NewUpload) -> MediaIngested:
    return MediaIngested(
        content_id=content_id,
        job_id=job_id,
        sha256=item.sha256,
        kind=item.kind,
        mime_type=item.mime_type,
        size_bytes=item.size_bytes,
    )


def _json_events(request: IngestRequest) -> list[JsonIngested]:
    """Every JSON upload of the request, stored bytes or not, in events of bounded size."""
    ids = [
        u for u, item in zip(request.upload_ids, request.items, strict=True) if item.kind == "json"
    ]
    return [
        JsonIngested(
            job_id=request.job_id,
            upload_ids=ids[start : start + JSON_UPLOADS_PER_EVENT],
            collection=request.collection,
        )
        for start in range(0, len(ids), JSON_UPLOADS_PER_EVENT)
    ]


@dataclass(frozen=True)
class IngestRequest:
    """What one accepted request will write."""

    owner: str
    comments: str | None
    request_id: str
    trace_id: str | None
    items: list[NewUpload]
    # The collection the request's JSON documents go to (None: the schemer chooses).
    collection: str | None = None
    job_id: uuid.UUID = field(default_factory=uuid.uuid4)
    headers: str = field(default_factory=lambda: orjson.dumps(trace_headers()).decode())
    # The request span (a later upload of the same content links to it), whether its trace
    # is recorded, and when the gateway started on the request.
    span_id: str | None = None
    trace_sampled: bool | None = None
    received_at: datetime | None = None

    @cached_property
    def upload_ids(self) -> list[uuid.UUID]:
        return [uuid.uuid4() for _ in self.items]


# One statement records a batch of requests (group commit: one WAL flush for many 202s).
# Each table's rows arrive as parallel arrays (one unnest per table); `Statement` numbers the
# placeholders. Content is upserted with a no-op update so that rows already stored, or
# committed meanwhile by a concurrent twin (the statement waits on the unique key), come back
# with their own id and stage. Media events were built with the ids proposed for new rows, so
# only media this statement created gets one; a new upload of media stored before gets a
# media.uploaded event instead (its link in the cluster's folder is all it needs). JSON
# uploads all get theirs: a document belongs to its upload (json.ingested names upload ids).
def _ingest_statement(requests: list[IngestRequest]) -> tuple[str, list[Any]]:
    content: dict[str, tuple[uuid.UUID, NewUpload, uuid.UUID]] = {}
    for request in requests:
        for item in request.items:
            content.setdefault(item.sha256, (uuid.uuid4(), item, request.job_id))
    ordered = sorted(content)  # one lock order: concurrent batches never deadlock
    new = [content[s] for s in ordered]
    stored = [s for s in ordered if content[s][1].storage_key is not None]
    headers = {r.job_id: r.headers for r in requests}
    events = [
        (_media_event(cid, job_id, item), cid, headers[job_id])
        for cid, item, job_id in new
        if item.kind != "json"
    ]
    json_events = [(e, r.headers) for r in requests for e in _json_events(r)]
    uploads = [
        (upload_id, r, position, item)
        for r in requests
        for position, (upload_id, item) in enumerate(zip(r.upload_ids, r.items, strict=True))
    ]
    # Bodies for the uploads of media, should their content turn out to be stored already;
    # the content id in them is the one proposed, replaced by the stored one below.
    uploaded = [
        (MediaUploaded(upload_id=upload_id, content_id=content[item.sha256][0], job_id=r.job_id), r)
        for upload_id, r, _, item in uploads
        if item.kind != "json"
    ]
    q = Statement()
    content_ids = q.param([cid for cid, _, _ in new], "uuid[]")
    sql = f"""
WITH job AS (
    INSERT INTO jobs (id, owner, request_id, trace_id, span_id, trace_sampled, received_at,
                      collection)
    SELECT * FROM unnest({q.param([r.job_id for r in requests], "uuid[]")},
                         {q.param([r.owner for r in requests], "text[]")},
                         {q.param([r.request_id for r in requests], "text[]")},
                         {q.param([r.trace_id for r in requests], "text[]")},
                         {q.param([r.span_id for r in requests], "text[]")},
                         {q.param([r.trace_sampled for r in requests], "boolean[]")},
                         {q.param([r.received_at for r in requests], "timestamptz[]")},
                         {q.param([r.collection for r in requests], "text[]")})
    RETURNING id, created_at
), c AS (
    INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key, document,
                         first_job_id)
    SELECT t.id, t.sha256, t.kind, t.mime, t.size, t.key, t.doc::jsonb, t.job_id
    FROM unnest({content_ids},
                {q.param(ordered, "text[]")},
                {q.param([item.kind for _, item, _ in new], "text[]")},
                {q.param([item.mime_type for _, item, _ in new], "text[]")},
                {q.param([item.size_bytes for _, item, _ in new], "bigint[]")},
                {q.param([item.storage_key for _, item, _ in new], "text[]")},
                {q.param([_text(item.document) for _, item, _ in new], "text[]")},
                {q.param([job_id for _, _, job_id in new], "uuid[]")})
         AS t(id, sha256, kind, mime, size, key, doc, job_id)
    -- The stored objects' locks (see lock_objects), all taken before any content row is.
    WHERE (SELECT count(pg_advisory_xact_lock(hashtextextended('mammothbox.object:' || s, 0)))
           FROM unnest({q.param(stored, "text[]")}) AS s) >= 0
    ORDER BY t.sha256
    ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256
    RETURNING id, sha256, kind, stage
), u AS (
    INSERT INTO uploads (id, job_id, content_id, owner, filename, comments, position)
    SELECT t.id, t.job_id, c.id, t.owner, t.filename, t.comments, t.position
    FROM unnest({q.param([u[0] for u in uploads], "uuid[]")},
                {q.param([u[1].job_id for u in uploads], "uuid[]")},
                {q.param([u[3].sha256 for u in uploads], "text[]")},
                {q.param([u[1].owner for u in uploads], "text[]")},
                {q.param([u[3].filename for u in uploads], "text[]")},
                {q.param([u[1].comments for u in uploads], "text[]")},
                {q.param([u[2] for u in uploads], "int[]")})
         AS t(id, job_id, sha256, owner, filename, comments, position)
    JOIN c ON c.sha256 = t.sha256
    RETURNING id, job_id, content_id
), o AS (
    INSERT INTO outbox (message_id, routing_key, body, headers)
    SELECT e.message_id, e.routing_key, e.body, e.headers::jsonb
    FROM unnest({q.param([e.message_id for e, _, _ in events], "uuid[]")},
                {q.param([e.routing_key for e, _, _ in events], "text[]")},
                {q.param([e.to_bytes() for e, _, _ in events], "bytea[]")},
                {q.param([h for _, _, h in events], "text[]")},
                {q.param([cid for _, cid, _ in events], "uuid[]")})
         AS e(message_id, routing_key, body, headers, content_id)
    JOIN c ON c.id = e.content_id
), d AS (
    INSERT INTO outbox (message_id, routing_key, body, headers)
    SELECT m.message_id, {q.param(MediaUploaded.routing_key)},
           convert_to((m.body::jsonb || jsonb_build_object('content_id', u.content_id))::text,
                      'UTF8'),
           m.headers::jsonb
    FROM unnest({q.param([e.message_id for e, _ in uploaded], "uuid[]")},
                {q.param([e.upload_id for e, _ in uploaded], "uuid[]")},
                {q.param([e.model_dump_json() for e, _ in uploaded], "text[]")},
                {q.param([r.headers for _, r in uploaded], "text[]")})
         AS m(message_id, upload_id, body, headers)
    JOIN u ON u.id = m.upload_id JOIN c ON c.id = u.content_id
    WHERE c.kind <> 'json' AND c.id <> ALL({content_ids})
), j AS (
    INSERT INTO outbox (message_id, routing_key, body, headers)
    SELECT e.message_id, {q.param(JsonIngested.routing_key)}, e.body, e.headers::jsonb
    FROM unnest({q.param([e.message_id for e, _ in json_events], "uuid[]")},
                {q.param([e.to_bytes() for e, _ in json_events], "bytea[]")},
                {q.param([h for _, h in json_events], "text[]")})
         AS e(message_id, body, headers)
)
SELECT id::text AS key, created_at, NULL AS kind, NULL AS stage FROM job
UNION ALL
SELECT sha256, NULL, kind, stage FROM c
"""
    return sql, q.args


async def write_ingests(
    conn: asyncpg.Connection | asyncpg.Pool, requests: list[IngestRequest]
) -> list[IngestRecord]:
    """Record requests in one statement: jobs, content (deduplicated by sha256), uploads,
    events for new content and a media.uploaded event for each new upload of stored media.
    Exact duplicates are decided by the unique key on content.sha256, within the batch and
    against concurrent writers, never by a race between workers. The statement first takes
    the locks of the stored objects (lock_objects), held until the transaction ends.
    """
    sql, args = _ingest_statement(requests)
    rows = await conn.fetch(sql, *args)
    created = {row["key"]: row["created_at"] for row in rows if row["created_at"] is not None}
    stages = {row["key"]: (row["kind"], row["stage"]) for row in rows if row["kind"] is not None}
    # A JSON upload is on its way whatever its content's stage: its document is its own.
    stages = {
        k: ("json", "ingested") if kind == "json" else (kind, stage)
        for k, (kind, stage) in stages.items()
    }
    return [
        IngestRecord(
            r.job_id, r.upload_ids, [stages[i.sha256] for i in r.items], created[str(r.job_id)]
        )
        for r in requests
    ]


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
        # Together: with S3 each is a request to the store (the connection is not used).
        await asyncio.gather(*(ensure() for ensure in ensure_placed))
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
