"""Writing documents into a collection's table, and what the table should become.

Shared by the ingest path (handlers) and approval (approval): documents become rows of the
table (what does not fit goes to `_overflow` and proposes a migration) or, for a JSONB
collection, rows holding the document whole. Every statement runs in the caller's
transaction, with the collection's row locked.
"""

from __future__ import annotations

import asyncpg
import structlog
from prometheus_client import Counter

from common import jsontext
from common.db import quoted
from schemer import infer, migrations
from schemer.decide import Column, Decision
from schemer.deps import Parsed, SchemerDeps
from schemer.identifiers import identifier
from schemer.repo import collections, ddl, documents
from schemer.rows import to_row

log = structlog.get_logger(__name__)

DOCUMENTS = Counter(
    "schemer_documents_total", "JSON documents given a place, by placement.", ["placement"]
)


def table_name_for(row: asyncpg.Record) -> str:
    """The table's name: owner and collection, through the one identifier function."""
    return identifier(f"{row['owner']}__{row['name']}")


async def proposed_ddl(conn: asyncpg.Connection, row: asyncpg.Record, decision: Decision) -> str:
    """The DDL approval would run, with every name quoted by the server."""
    table = row["table_name"] or table_name_for(row)
    if decision.storage == "jsonb":
        qtable, qindex = await quoted(conn, [table, identifier(f"{table}_document_gin")])
        return ddl.create_jsonb_table(qtable, qindex)
    qtable, *qcolumns = await quoted(conn, [table, *(c.name for c in decision.columns)])
    return ddl.create_table(
        qtable, [(q, c.type) for q, c in zip(qcolumns, decision.columns, strict=True)]
    )


async def insert(
    conn: asyncpg.Connection, deps: SchemerDeps, row: asyncpg.Record, batch: list[Parsed]
) -> int:
    """Write a batch into the collection's table (it exists); how many were new to it."""
    ids = [p.upload.upload_id for p in batch]
    qtable = (await quoted(conn, [row["table_name"]]))[0]
    if row["storage"] == "jsonb":
        async with documents.acting_as(conn, deps.role):
            row_ids = await documents.insert_documents(
                conn, qtable, ids, [p.upload.document for p in batch]
            )
        placed = {i: (row_ids[i], False) for i in ids}
        DOCUMENTS.labels("jsonb").inc(len(batch))
        return await documents.record(conn, row["id"], "jsonb", [p.upload for p in batch], placed)
    columns = [Column.from_json(c) for c in row["columns"]]
    rows = [to_row(p.document, columns, deps.settings.schema_max_depth) for p in batch]
    qcolumns = await quoted(conn, [c.name for c in columns])
    typed = [(q, c.type) for q, c in zip(qcolumns, columns, strict=True)]
    values = [[r.values[i] for r in rows] for i in range(len(columns))]
    overflows = [jsontext.dumps(r.overflow).decode() if r.overflow else None for r in rows]
    async with documents.acting_as(conn, deps.role):
        row_ids = await documents.insert_rows(conn, qtable, typed, ids, values, overflows)
    placed = {i: (row_ids[i], r.overflow is not None) for i, r in zip(ids, rows, strict=True)}
    DOCUMENTS.labels("table").inc(len(batch))
    misfits = [m for r in rows for m in r.misfits]
    if misfits:
        await _propose_migration(conn, row, columns, misfits)
    return await documents.record(conn, row["id"], "table", [p.upload for p in batch], placed)


async def _propose_migration(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    columns: list[Column],
    misfits: list[tuple[infer.Path, str]],
) -> None:
    """Open or extend the migration that would give the misfits columns of their own."""
    waiting = await collections.open_migration(conn, row["id"])
    if waiting is not None and waiting["status"] != "proposed":
        return  # one is being applied; its backfill takes what fits
    pending = [migrations.Change.from_json(c) for c in waiting["changes"]] if waiting else []
    changes = migrations.propose(columns, misfits, pending)
    if not changes or changes == pending:
        return
    names = await quoted(conn, [row["table_name"], *(c.column for c in changes)])
    statement = ddl.alter_table(
        names[0],
        [(q, c.type, c.action) for q, c in zip(names[1:], changes, strict=True)],
    )
    n = await collections.propose_migration(
        conn, row["id"], [c.to_json() for c in changes], statement
    )
    log.info(
        "migration proposed",
        collection=row["name"],
        migration=n,
        changes=[migrations.describe(c) for c in changes],
    )
