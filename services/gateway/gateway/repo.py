"""The gateway's SQL: the ingest transaction, job status and object lookups."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from common.messages import Event, JsonIngested, MediaIngested
from common.outbox import add_events


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
    before_commit: Callable[[], Awaitable[None]],
) -> IngestRecord:
    """The ingest transaction: job, content (deduplicated by sha256), uploads and events.

    Exact duplicates are decided here by the unique key on content.sha256: of two concurrent
    requests with the same bytes, one inserts the row and its event, the other waits on the
    key and finds the row. `idempotency` is (scope, key, request hash). `before_commit` puts
    the bytes in place while the rows are still invisible, so no reader sees a row whose file
    is missing, and a refused request (a reused idempotency key) leaves no file behind.
    """
    job_id = uuid.uuid4()
    async with conn.transaction():
        created_at = await conn.fetchval(
            "INSERT INTO jobs (id, owner, request_id, trace_id) VALUES ($1, $2, $3, $4)"
            " RETURNING created_at",
            job_id,
            owner,
            request_id,
            trace_id,
        )
        upload_ids = [uuid.uuid4() for _ in items]
        if idempotency is not None:
            await _claim_idempotency_key(conn, idempotency, job_id)

        by_sha = {item.sha256: item for item in items}
        ordered = sorted(by_sha)  # a fixed order: concurrent requests never deadlock
        proposed = {sha: uuid.uuid4() for sha in ordered}
        inserted = await conn.fetch(
            """INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key,
                                    document, first_job_id)
               SELECT t.id, t.sha256, t.kind, t.mime, t.size, t.key, t.doc::jsonb, $8
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                           $6::text[], $7::text[]) AS t(id, sha256, kind, mime, size, key, doc)
               ORDER BY t.sha256
               ON CONFLICT (sha256) DO NOTHING
               RETURNING id, sha256""",
            [proposed[s] for s in ordered],
            ordered,
            [by_sha[s].kind for s in ordered],
            [by_sha[s].mime_type for s in ordered],
            [by_sha[s].size_bytes for s in ordered],
            [by_sha[s].storage_key for s in ordered],
            [_text(by_sha[s].document) for s in ordered],
            job_id,
        )
        new = {row["sha256"] for row in inserted}
        rows = await conn.fetch(
            "SELECT id, sha256, kind, stage FROM content WHERE sha256 = ANY($1::text[])", ordered
        )
        content = {row["sha256"]: row for row in rows}
        await conn.execute(
            """INSERT INTO uploads (id, job_id, content_id, owner, filename, comments, position)
               SELECT t.id, $2, t.content_id, $3, t.filename, $4, t.position
               FROM unnest($1::uuid[], $5::uuid[], $6::text[], $7::int[])
                    AS t(id, content_id, filename, position)""",
            upload_ids,
            job_id,
            owner,
            comments,
            [content[i.sha256]["id"] for i in items],
            [i.filename for i in items],
            list(range(len(items))),
        )
        await add_events(conn, [_event_for(content[s]["id"], job_id, by_sha[s]) for s in ordered
                                if s in new])
        await before_commit()
        stages = [(content[i.sha256]["kind"], content[i.sha256]["stage"]) for i in items]
        record = IngestRecord(job_id, upload_ids, stages, created_at)
        if idempotency is not None:
            await conn.execute(
                "UPDATE idempotency_keys SET response = $3 WHERE scope = $1 AND key = $2",
                idempotency[0],
                idempotency[1],
                response_for(record),
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
