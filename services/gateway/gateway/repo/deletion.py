"""Deleting uploads: the rows go at once, in one transaction with the event that takes their
content, documents and folder links away (clusterer/purge.py, schemer/deletion.py).

Every selection goes through an OwnerScope: a request's own (an owner-bound key deletes only
its owner's uploads), or the one owner an admin deletes, or the owners a retention rule names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from common.messages import DELETED_UPLOADS_PER_EVENT, DeletedDocument, UploadsDeleted
from common.outbox import add_events
from gateway.repo.scope import OwnerScope, Statement

Reason = Literal["request", "owner", "retention"]


@dataclass
class Deleted:
    """What one deletion removed."""

    upload_ids: list[uuid.UUID] = field(default_factory=list)
    job_ids: list[uuid.UUID] = field(default_factory=list)

    def add(self, other: Deleted) -> None:
        self.upload_ids += other.upload_ids
        self.job_ids += other.job_ids


async def delete_object(
    conn: asyncpg.Connection, scope: OwnerScope, upload_id: uuid.UUID, actor: str
) -> Deleted:
    """Delete one upload of the scope (nothing when it is unknown or another owner's)."""
    q = Statement()
    where = f"u.id = {q.param(upload_id)} AND {scope.owns(q, 'u.owner')}"
    return await delete_where(conn, q, where, actor=actor, reason="request", limit=1)


async def delete_job(
    conn: asyncpg.Connection, scope: OwnerScope, job_id: uuid.UUID, actor: str
) -> Deleted:
    """Delete every upload of one job of the scope, and the job."""
    deleted = Deleted()
    while True:
        q = Statement()
        where = f"u.job_id = {q.param(job_id)} AND {scope.owns(q, 'u.owner')}"
        batch = await delete_where(
            conn, q, where, actor=actor, reason="request", limit=DELETED_UPLOADS_PER_EVENT
        )
        deleted.add(batch)
        if len(batch.upload_ids) < DELETED_UPLOADS_PER_EVENT:
            return deleted


async def delete_owner_batch(
    conn: asyncpg.Connection, owner: OwnerScope, actor: str, limit: int
) -> Deleted:
    """Delete up to `limit` uploads of one owner (an admin's "delete everything of X")."""
    if not owner.bound:
        raise ValueError("an owner deletion needs one owner")
    q = Statement()
    where = owner.owns(q, "u.owner")
    return await delete_where(conn, q, where, actor=actor, reason="owner", limit=limit)


async def announce_owner_deleted(conn: asyncpg.Connection, owner: OwnerScope, actor: str) -> None:
    """Every upload of the owner is gone: their collections go next (the schemer's part)."""
    assert owner.owner is not None
    event = UploadsDeleted(
        upload_ids=[], content_ids=[], owner_deleted=owner.owner, actor=actor, reason="owner"
    )
    async with conn.transaction():
        await add_events(conn, [event])
        await conn.execute(
            """INSERT INTO audit_log (actor, action, entity, entity_id, details)
               VALUES ($1, 'owner.delete', 'owner', $2, '{}')""",
            actor,
            owner.owner,
        )


async def delete_where(
    conn: asyncpg.Connection,
    q: Statement,
    where: str,
    *,
    actor: str,
    reason: Reason,
    limit: int,
) -> Deleted:
    """One transaction: lock the uploads (then their jobs), note where their documents went,
    delete them, the jobs they leave empty (with those jobs' stage log and dead letters), write
    the event and an audit row per upload.

    Locking the uploads first means no schemer transaction still places one of them: placing
    holds a key-share lock on the upload (its json_documents row's foreign key), so the
    documents read after the lock are all there will be."""
    limit = min(limit, DELETED_UPLOADS_PER_EVENT)
    async with conn.transaction():
        rows = await conn.fetch(
            f"""SELECT u.id, u.content_id, u.job_id, u.owner FROM uploads u WHERE {where}
                ORDER BY u.id LIMIT {q.param(limit)} FOR UPDATE OF u""",
            *q.args,
        )
        if not rows:
            return Deleted()
        upload_ids = [r["id"] for r in rows]
        job_ids = sorted({r["job_id"] for r in rows})
        documents = await conn.fetch(
            """SELECT upload_id, collection_id FROM json_documents
               WHERE upload_id = ANY($1::uuid[])""",
            upload_ids,
        )
        await conn.execute("DELETE FROM uploads WHERE id = ANY($1::uuid[])", upload_ids)
        # The jobs' locks, so that two deletions taking a job's last uploads see each other.
        await conn.execute(
            "SELECT FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", job_ids
        )
        emptied = [
            r["id"]
            for r in await conn.fetch(
                """DELETE FROM jobs j WHERE j.id = ANY($1::uuid[])
                     AND NOT EXISTS (SELECT FROM uploads x WHERE x.job_id = j.id)
                   RETURNING j.id""",
                job_ids,
            )
        ]
        if emptied:
            await conn.execute(
                """WITH s AS (DELETE FROM stage_runs WHERE job_id = ANY($1::uuid[]))
                   DELETE FROM dead_letters WHERE job_id = ANY($1::uuid[])""",
                emptied,
            )
        event = UploadsDeleted(
            upload_ids=upload_ids,
            content_ids=sorted({r["content_id"] for r in rows}),
            documents=[
                DeletedDocument(upload_id=d["upload_id"], collection_id=d["collection_id"])
                for d in documents
            ],
            actor=actor[:200],
            reason=reason,
        )
        await add_events(conn, [event])
        await conn.execute(
            """INSERT INTO audit_log (actor, action, entity, entity_id, details)
               SELECT $1, 'upload.delete', 'upload', t.id::text,
                      jsonb_build_object('owner', t.owner, 'job_id', t.job, 'content_id',
                                         t.content, 'reason', $2::text)
               FROM unnest($3::uuid[], $4::text[], $5::uuid[], $6::uuid[])
                    AS t(id, owner, job, content)""",
            actor,
            reason,
            upload_ids,
            [r["owner"] for r in rows],
            [r["job_id"] for r in rows],
            [r["content_id"] for r in rows],
        )
    return Deleted(upload_ids, emptied)
