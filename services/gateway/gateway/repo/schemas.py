"""Collections, their schemas and documents as a request sees them; commands to the schemer.

A collection belongs to one owner (json_collections.owner, scoped like uploads); its table in
the `collections` schema is reached only through its row, with names quoted by the server.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, TypeAlias

import asyncpg

from common.db import quoted
from common.messages import SchemaCommand
from common.outbox import add_events
from gateway.document_filters import Filter
from gateway.repo.scope import OwnerScope, Statement

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

_SUMMARY = """jc.id, jc.owner, jc.name, jc.name_source, jc.status, jc.storage,
    jc.document_count, jc.decision, jc.table_name, jc.created_at, jc.updated_at,
    jc.decided_at, jc.decided_by,
    (SELECT count(*) FROM json_documents d
     WHERE d.collection_id = jc.id AND d.placement = 'staged') AS staged"""


async def list_schemas(
    conn: Conn, scope: OwnerScope, limit: int, offset: int
) -> list[asyncpg.Record]:
    q = Statement()
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT {_SUMMARY} FROM json_collections jc
            WHERE {scope.owns(q, "jc.owner")}
            ORDER BY jc.created_at DESC, jc.id
            LIMIT {q.param(limit)} OFFSET {q.param(offset)}""",
        *q.args,
    )
    return rows


async def schema(conn: Conn, scope: OwnerScope, collection_id: uuid.UUID) -> asyncpg.Record | None:
    """One collection whole (fields, JSON Schema, DDL, columns, migrations); None when not
    the scope's."""
    q = Statement()
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""SELECT {_SUMMARY}, jc.fields, jc.json_schema::text AS json_schema,
                   jc.proposed_ddl, jc.columns,
                   coalesce((SELECT jsonb_agg(jsonb_build_object(
                                 'n', m.n, 'status', m.status, 'changes', m.changes,
                                 'ddl', m.ddl, 'created_at', m.created_at,
                                 'applied_at', m.applied_at) ORDER BY m.n)
                             FROM json_migrations m WHERE m.collection_id = jc.id),
                            '[]') AS migrations
            FROM json_collections jc
            WHERE jc.id = {q.param(collection_id)} AND {scope.owns(q, "jc.owner")}""",
        *q.args,
    )
    return row


async def collections_named(
    conn: Conn, scope: OwnerScope, name: str, owner: str | None
) -> list[asyncpg.Record]:
    """The scope's collections of this name (one per owner), with their table's quoted name."""
    q = Statement()
    owner_filter = OwnerScope(owner).owns(q, "jc.owner")  # the owner asked for, if any
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT jc.id, jc.owner, jc.name, jc.status, jc.storage, jc.table_name,
                   quote_ident(jc.table_name) AS qtable, jc.columns, jc.fields
            FROM json_collections jc
            WHERE jc.name = {q.param(name)} AND {owner_filter} AND {scope.owns(q, "jc.owner")}""",
        *q.args,
    )
    return rows


async def collection_status(
    conn: Conn, scope: OwnerScope, collection_id: uuid.UUID
) -> asyncpg.Record | None:
    q = Statement()
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""SELECT jc.status, jc.name,
                   (SELECT jsonb_object_agg(m.n::text, m.status) FROM json_migrations m
                    WHERE m.collection_id = jc.id) AS migrations
            FROM json_collections jc
            WHERE jc.id = {q.param(collection_id)} AND {scope.owns(q, "jc.owner")}""",
        *q.args,
    )
    return row


async def send_command(conn: asyncpg.Connection, command: SchemaCommand) -> None:
    """Queue the command through the outbox (the schemer carries it out)."""
    async with conn.transaction():
        await add_events(conn, [command])


def _table_condition(q: Statement, f: Filter, qcolumn: str) -> str:
    value = float(f.value) if f.field.type == "double precision" else f.value
    return f"t.{qcolumn} {f.op} {q.param(value)}"


_JSON_KIND = {"text": "string", "timestamptz": "string", "date": "string", "boolean": "boolean"}


def _jsonb_condition(q: Statement, f: Filter) -> str:
    kind = f.field.type
    if kind in ("text", "boolean", "bigint", "double precision", "numeric") and f.op in ("=", "!="):
        nested: Any = _number(f.value) if isinstance(f.value, Decimal | int) else f.value
        for key in reversed(f.field.keys):
            nested = {key: nested}
        contains = f"t.document @> {q.param(nested)}::jsonb"
        return contains if f.op == "=" else f"NOT ({contains})"
    keys = q.param(f.field.keys, "text[]")
    json_kind = _JSON_KIND.get(kind, "number")
    typed = {"text": "text", "timestamptz": "timestamptz", "date": "date"}.get(kind, "numeric")
    valid = (
        f" AND pg_input_is_valid(t.document #>> {keys}, '{typed}')"
        if typed in ("timestamptz", "date")
        else ""
    )
    return (
        f"(CASE WHEN jsonb_typeof(t.document #> {keys}) = '{json_kind}'{valid}"
        f" THEN (t.document #>> {keys})::{typed} END) {f.op} {q.param(f.value)}::{typed}"
    )


def _number(value: Decimal | int) -> Any:
    if isinstance(value, int):
        return value
    integral = value == value.to_integral_value()
    return int(value) if integral else float(value)


async def documents(
    conn: Conn,
    collection: asyncpg.Record,
    filters: list[Filter],
    limit: int,
    after: int,
    upload_id: uuid.UUID | None = None,
) -> list[asyncpg.Record]:
    """Rows of the collection's table (it exists), filtered, after row `after`, by row id."""
    q = Statement()
    # A deleted upload's row leaves the table soon after (schemer/deletion.py); until then
    # its upload is already gone, and so is the row from what anyone is shown.
    conditions = [
        f"t._id > {q.param(after)}",
        "EXISTS (SELECT FROM json_documents d WHERE d.upload_id = t._upload_id)",
    ]
    if upload_id is not None:
        conditions.append(f"t._upload_id = {q.param(upload_id)}")
    if collection["storage"] == "table":
        qcolumns = await quoted(conn, [f.field.column or "" for f in filters]) if filters else []
        conditions += [_table_condition(q, f, c) for f, c in zip(filters, qcolumns, strict=True)]
        body = (
            "(to_jsonb(t) - '_id' - '_upload_id' - '_overflow' - '_created_at')::text AS columns,"
            " t._overflow::text AS overflow"
        )
    else:
        conditions += [_jsonb_condition(q, f) for f in filters]
        body = "t.document::text AS document"
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT t._id, t._upload_id, t._created_at, {body}
            FROM collections.{collection["qtable"]} t
            WHERE {" AND ".join(conditions)}
            ORDER BY t._id LIMIT {q.param(limit)}""",
        *q.args,
    )
    return rows


async def staged_documents(
    conn: Conn,
    scope: OwnerScope,
    collection_id: uuid.UUID,
    limit: int,
    after: uuid.UUID | None,
    upload_id: uuid.UUID | None = None,
) -> list[asyncpg.Record]:
    """Documents of a collection without a table yet (staged), as stored."""
    q = Statement()
    only = "TRUE" if upload_id is None else f"d.upload_id = {q.param(upload_id)}"
    start = "TRUE" if after is None else f"d.upload_id > {q.param(after)}"
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT d.upload_id, d.created_at, c.document::text AS document
            FROM json_documents d JOIN content c ON c.id = d.content_id
            JOIN json_collections jc ON jc.id = d.collection_id
            WHERE d.collection_id = {q.param(collection_id)} AND {only} AND {start}
              AND {scope.owns(q, "jc.owner")}
            ORDER BY d.upload_id LIMIT {q.param(limit)}""",
        *q.args,
    )
    return rows
