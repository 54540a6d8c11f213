"""An admin's decisions, carried out: approve (the proposed table), reject (a JSONB
collection), approve a migration (ALTER TABLE, then the overflow moves into its columns).

Each runs in steps that a crash may interrupt anywhere: the table is created with the
collection locked and its name recorded in the same transaction; staged documents then move
in batches, each batch one transaction (rows inserted, json_documents updated), until a
transaction finds none left and sets the final status. A redelivered command resumes where
the last committed batch ended; the table's unique `_upload_id` keeps every document once.
"""

from __future__ import annotations

import uuid
from typing import Literal

import asyncpg
import structlog

from common import jsontext
from common.consumer import Delivery, Permanent
from common.db import quoted
from common.messages import SchemaCommand
from schemer import migrations
from schemer.decide import Column, decide
from schemer.deps import Parsed, SchemerDeps, rules
from schemer.identifiers import identifier
from schemer.infer import Stats, flatten
from schemer.placement import insert, table_name_for
from schemer.repo import collections, ddl, documents
from schemer.rows import Misfit, convert, nest

log = structlog.get_logger(__name__)

FINAL = {"approve": "approved", "reject": "rejected"}
BUSY = {"approve": "approving", "reject": "rejecting"}


async def handle_command(deps: SchemerDeps, command: SchemaCommand, delivery: Delivery) -> None:
    if command.action == "approve_migration":
        if command.migration is None:
            raise Permanent("approve_migration needs a migration number")
        await apply_migration(deps, command.collection_id, command.migration, command.actor)
    else:
        await materialise(deps, command.collection_id, command.action, command.actor)


async def materialise(
    deps: SchemerDeps,
    collection_id: uuid.UUID,
    action: Literal["approve", "reject"],
    actor: str,
) -> None:
    """Create the collection's table (approve: as proposed; reject: JSONB) and move every
    staged document into it."""
    async with deps.pool.acquire() as conn:
        async with conn.transaction():
            row = await collections.lock(conn, collection_id)
            if row is None:
                raise Permanent(f"no collection {collection_id}")
            if row["status"] in FINAL.values():
                return  # decided before (a repeated command)
            if row["table_name"] is None:
                await _create_table(conn, deps, row, action, actor)
            if row["status"] == "provisional":
                await collections.set_status(conn, collection_id, BUSY[action])
                await collections.audit(
                    conn, actor, f"collection.{action}", collection_id, {"name": row["name"]}
                )
        moved = 0
        while True:
            async with conn.transaction():
                row = await collections.lock(conn, collection_id)
                assert row is not None
                batch = await documents.staged(
                    conn, collection_id, deps.settings.schemer_approval_batch
                )
                if not batch:
                    await collections.set_status(conn, collection_id, FINAL[action])
                    break
                parsed = [Parsed(u, jsontext.loads(u.document)) for u in batch]
                await insert(conn, deps, row, parsed)
                moved += len(batch)
    log.info("collection materialised", collection=row["name"], action=action, moved=moved)


async def _create_table(
    conn: asyncpg.Connection,
    deps: SchemerDeps,
    row: asyncpg.Record,
    action: str,
    actor: str,
) -> None:
    """The table of the decision (a JSONB table when rejected), its name and columns kept."""
    decision = decide(Stats.from_json(row["stats"]), rules(deps.settings))
    storage = "jsonb" if action == "reject" else decision.storage
    name = table_name_for(row)
    if await collections.table_name_taken(conn, name, row["id"]):
        # Two owners whose names normalise alike: this collection's own, stable suffix.
        name = identifier(f"{row['owner']}__{row['name']}__{row['id'].hex[:8]}")
    if storage == "jsonb":
        qtable, qindex = await quoted(conn, [name, identifier(f"{name}_document_gin")])
        statement = ddl.create_jsonb_table(qtable, qindex)
        columns = None
    else:
        qtable, *qcolumns = await quoted(conn, [name, *(c.name for c in decision.columns)])
        statement = ddl.create_table(
            qtable, [(q, c.type) for q, c in zip(qcolumns, decision.columns, strict=True)]
        )
        columns = [c.to_json() for c in decision.columns]
    async with documents.acting_as(conn, deps.role):
        await documents.execute_ddl(conn, statement)
    await collections.materialised(
        conn, row["id"], storage=storage, table_name=name, columns=columns, actor=actor
    )
    log.info("collection table created", collection=row["name"], table=name, storage=storage)


async def apply_migration(deps: SchemerDeps, collection_id: uuid.UUID, n: int, actor: str) -> None:
    """ALTER the table as migration `n` says, then move what fits out of `_overflow`."""
    async with deps.pool.acquire() as conn:
        async with conn.transaction():
            row = await collections.lock(conn, collection_id)
            found = await collections.migration(conn, collection_id, n) if row else None
            if row is None or found is None:
                raise Permanent(f"no migration {n} of collection {collection_id}")
            if found["status"] == "applied":
                return
            changes = [migrations.Change.from_json(c) for c in found["changes"]]
            columns = [Column.from_json(c) for c in row["columns"]]
            if found["status"] == "proposed":
                names = await quoted(conn, [row["table_name"], *(c.column for c in changes)])
                statement = ddl.alter_table(
                    names[0],
                    [(q, c.type, c.action) for q, c in zip(names[1:], changes, strict=True)],
                )
                async with documents.acting_as(conn, deps.role):
                    await documents.execute_ddl(conn, statement)
                columns = migrations.apply(columns, changes)
                await collections.set_columns(conn, collection_id, [c.to_json() for c in columns])
                await collections.set_migration_status(conn, collection_id, n, "approving")
                await collections.audit(
                    conn, actor, "collection.migrate", collection_id, {"migration": n}
                )
        await _backfill(conn, deps, row["table_name"], changes)
        async with conn.transaction():
            await collections.set_migration_status(conn, collection_id, n, "applied")
    log.info("migration applied", collection=row["name"], migration=n)


async def _backfill(
    conn: asyncpg.Connection, deps: SchemerDeps, table: str, changes: list[migrations.Change]
) -> None:
    """Move the values the migration made room for from `_overflow` into their columns."""
    qtable, *qcolumns = await quoted(conn, [table, *(c.column for c in changes)])
    typed = [(q, c.type) for q, c in zip(qcolumns, changes, strict=True)]
    after = 0
    while True:
        async with conn.transaction():
            rows = await documents.overflow_rows(
                conn, qtable, after, deps.settings.schemer_approval_batch
            )
            if not rows:
                return
            values: list[list[object]] = [[] for _ in changes]
            left: list[str | None] = []
            emptied = []
            for record in rows:
                leaves = dict(flatten(jsontext.loads(record["overflow"]), 64).leaves)
                for i, change in enumerate(changes):
                    value = _take(leaves, change)
                    values[i].append(value)
                left.append(jsontext.dumps(nest(leaves)).decode() if leaves else None)
                if not leaves:
                    emptied.append(record["_upload_id"])
            async with documents.acting_as(conn, deps.role):
                await documents.update_backfilled(
                    conn, qtable, typed, [r["_id"] for r in rows], values, left
                )
            await documents.clear_overflow_flags(conn, emptied)
            after = rows[-1]["_id"]


def _take(leaves: dict[tuple[str, ...], object], change: migrations.Change) -> object:
    """The change's value out of an overflow's leaves, when it fits its new column."""
    prefix = change.path
    if prefix not in leaves:
        # An object deeper than the flattening: the column holds it whole (jsonb).
        inner = {p[len(prefix) :]: v for p, v in leaves.items() if p[: len(prefix)] == prefix}
        if not inner or change.type != "jsonb":
            return None
        for p in [p for p in leaves if p[: len(prefix)] == prefix]:
            del leaves[p]
        return convert(nest(inner), "jsonb")
    try:
        value = convert(leaves[prefix], change.type)
    except Misfit:
        return None
    del leaves[prefix]
    return value
