"""json.ingested -> the uploads' collection -> staged, or rows of its table.

A batch (the JSON uploads of one request) goes to one collection: the one it names, the one
another part of the same request went to, the owner's collection whose key paths it most
resembles (Jaccard similarity of at least SCHEMA_MATCH_THRESHOLD), or a new provisional one.
Its statistics join the collection's; while provisional the proposal (decision, reasons,
DDL) is made again from them. Once the collection has its table, documents become rows there
(what does not fit goes to `_overflow` and proposes a migration); before, they are staged.

Everything one batch changes is one transaction holding the collection's row lock, and each
upload has at most one place (json_documents' key, the table's unique `_upload_id`): a
redelivery, or two schemers handed the same uploads, leave each document exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from genson import SchemaBuilder
from prometheus_client import Counter, Histogram

from common import jsontext
from common.consumer import Delivery
from common.messages import JsonIngested, JsonIngestedV1
from schemer import infer
from schemer.approval import materialise
from schemer.decide import decide, fields
from schemer.deps import Parsed, SchemerDeps, rules
from schemer.naming import generated_name
from schemer.placement import DOCUMENTS, insert, proposed_ddl
from schemer.repo import collections, documents

log = structlog.get_logger(__name__)

BATCH_SECONDS = Histogram(
    "schemer_batch_seconds",
    "Time to place one batch of documents (grouping, inference, writes).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COLLECTIONS_OPENED = Counter("schemer_collections_opened_total", "Collections opened.")


async def handle_ingested(deps: SchemerDeps, event: JsonIngested, delivery: Delivery) -> None:
    await place(deps, event.job_id, event.upload_ids, event.collection)


async def handle_ingested_v1(deps: SchemerDeps, event: JsonIngestedV1, delivery: Delivery) -> None:
    """An event of the first version (one per new content): the job's uploads of it."""
    upload_ids = await documents.uploads_of_content(deps.pool, event.job_id, event.content_id)
    if upload_ids:
        await place(deps, event.job_id, upload_ids, None)


@dataclass(frozen=True)
class Pending:
    """One event's documents, parsed and looked at, on their way into their collection."""

    collection_id: uuid.UUID
    batch: list[Parsed]
    stats: infer.Stats


async def place(
    deps: SchemerDeps, job_id: uuid.UUID, upload_ids: list[uuid.UUID], named: str | None
) -> None:
    """Parse, look at and group one event's documents (no lock held), then place them with
    whatever other events are waiting for the same collection (deps.placer)."""
    uploads = await documents.unplaced(deps.pool, upload_ids)
    if not uploads:
        return  # every one has its place already: a redelivery
    batch = [Parsed(u, jsontext.loads(u.document)) for u in uploads]
    stats = _observe(deps, batch)
    collection_id = await choose_collection(deps, job_id, uploads[0].owner, named, stats)
    await deps.placer.submit(Pending(collection_id, batch, stats))


def _observe(deps: SchemerDeps, batch: list[Parsed]) -> infer.Stats:
    settings = deps.settings
    return infer.observe(
        [p.document for p in batch], settings.schema_max_depth, settings.schema_sample_size
    )


async def place_groups(deps: SchemerDeps, pending: Sequence[Pending]) -> list[None]:
    """Place waiting events' documents: per collection one transaction, one lock, one commit
    and one update of its statistics (collections in id order: no two writers deadlock)."""
    groups: dict[uuid.UUID, list[Pending]] = {}
    for item in pending:
        groups.setdefault(item.collection_id, []).append(item)
    for collection_id in sorted(groups):
        await _place_in(deps, collection_id, groups[collection_id])
    return [None] * len(pending)


async def _place_in(deps: SchemerDeps, collection_id: uuid.UUID, items: list[Pending]) -> None:
    start = time.perf_counter()
    batch = list({p.upload.upload_id: p for item in items for p in item.batch}.values())
    stats = infer.Stats()
    for item in items:
        stats.merge(item.stats)
    if len(batch) < sum(len(item.batch) for item in items):  # an upload twice: look again
        stats = _observe(deps, batch)
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await collections.lock(conn, collection_id)
        assert row is not None  # collections are never deleted while documents arrive
        ids = [p.upload.upload_id for p in batch]
        done = await documents.placed(conn, ids)
        # Deleted since they were read (their foreign key would fail the whole batch).
        gone = set(ids) - await documents.kept(conn, ids)
        if done or gone:  # a twin delivery placed some meanwhile (we waited for its lock)
            batch = [p for p in batch if p.upload.upload_id not in done | gone]
            if not batch:
                return
            stats = _observe(deps, batch)
        await _add(conn, deps, row, batch, stats)
    BATCH_SECONDS.observe(time.perf_counter() - start)
    if deps.settings.schema_auto_approve and row["status"] == "provisional":
        await materialise(deps, collection_id, "approve", "auto-approve")


async def choose_collection(
    deps: SchemerDeps, job_id: uuid.UUID, owner: str, named: str | None, stats: infer.Stats
) -> uuid.UUID:
    """The batch's collection: named, the job's, the most alike, or a new one."""
    pool = deps.pool
    if named is not None:
        found = await collections.by_name(pool, owner, named)
        if found is not None:
            return found
        async with pool.acquire() as conn:
            return await _open(conn, deps, owner, named, "given", stats)
    found = await collections.job_collection(pool, job_id)
    if found is not None:
        return found
    found = await _most_alike(pool, owner, stats, deps.settings.schema_match_threshold)
    if found is not None:
        return found
    async with pool.acquire() as conn, conn.transaction():
        # One schemer at a time opens a collection for this owner; looking again under the
        # lock, a twin batch that opened one for the same shape meanwhile is found.
        await collections.lock_owner(conn, owner)
        found = await collections.job_collection(conn, job_id) or await _most_alike(
            conn, owner, stats, deps.settings.schema_match_threshold
        )
        if found is not None:
            return found
        keys = list(dict.fromkeys(p[0] for p in stats.paths))
        base = generated_name(keys, ())
        name = generated_name(keys, await collections.names_like(conn, owner, base))
        return await _open(conn, deps, owner, name, "generated", stats, job_id)


async def _most_alike(
    conn: collections.Conn, owner: str, stats: infer.Stats, threshold: float
) -> uuid.UUID | None:
    shape = stats.core_paths()
    best: tuple[float, uuid.UUID] | None = None
    for row in await collections.shapes(conn, owner):
        score = infer.jaccard(shape, set(row["paths"]))
        if score >= threshold and (best is None or score > best[0]):
            best = (score, row["id"])
    return best[1] if best else None


async def _open(
    conn: asyncpg.Connection,
    deps: SchemerDeps,
    owner: str,
    name: str,
    source: str,
    stats: infer.Stats,
    job_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Open a provisional collection (its statistics arrive with the batch's placement)."""
    collection_id = uuid.uuid4()
    decision = decide(stats, rules(deps.settings))
    created = await collections.create(
        conn,
        {
            "id": collection_id,
            "owner": owner,
            "name": name,
            "name_source": source,
            "storage": decision.storage,
            "paths": sorted(stats.core_paths()),
            "stats": infer.Stats().to_json(),
            "decision": decision.to_json(),
            "json_schema": {},
            "proposed_ddl": "",
            "opened_by_job": job_id,
        },
    )
    if not created:  # named concurrently by a twin batch
        found = await collections.by_name(conn, owner, name)
        assert found is not None
        return found
    COLLECTIONS_OPENED.inc()
    log.info("collection opened", owner=owner, collection=name, proposed=decision.storage)
    return collection_id


def _schema(existing: dict[str, Any], batch: list[dict[str, Any]], sample: int) -> dict[str, Any]:
    """The collection's JSON Schema (genson), grown by a sample of the batch."""
    builder = SchemaBuilder()
    if existing:
        builder.add_schema(existing)
    step = max(1, -(-len(batch) // sample))
    try:
        for document in batch[::step][:sample]:
            builder.add_object(document)
    except RecursionError:  # deeper than genson recurses: keep what the schema had
        return existing
    schema: dict[str, Any] = builder.to_schema()
    return schema


async def _add(
    conn: asyncpg.Connection,
    deps: SchemerDeps,
    row: asyncpg.Record,
    batch: list[Parsed],
    stats: infer.Stats,
) -> None:
    """Place a batch in its (locked) collection and grow the collection's statistics."""
    settings = deps.settings
    collection_stats = infer.Stats.from_json(row["stats"])
    collection_stats.merge(stats)
    proposal: dict[str, Any] = {}
    if row["status"] == "provisional":
        decision = decide(collection_stats, rules(settings))
        proposal = {
            "decision": decision.to_json(),
            "storage": decision.storage,
            "proposed_ddl": await proposed_ddl(conn, row, decision),
        }
    if row["table_name"] is None:
        added = await documents.record(conn, row["id"], "staged", [p.upload for p in batch])
        DOCUMENTS.labels("staged").inc(len(batch))
    else:
        added = await insert(conn, deps, row, batch)
    await collections.save_inference(
        conn,
        row["id"],
        paths=sorted(collection_stats.core_paths()),
        stats=collection_stats.to_json(),
        fields=fields(collection_stats),
        json_schema=_schema(
            row["json_schema"], [p.document for p in batch], settings.schema_sample_size
        ),
        added=added,
        **proposal,
    )
    await documents.mark_stored(conn, [p.upload.content_id for p in batch])
