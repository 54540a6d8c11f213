"""Collections of JSON documents: their schemas and decisions, an admin's approval, and the
documents themselves.

Approval, rejection and migrations are carried out by the schemer (moving staged documents
into a new table may take a while): the gateway queues the command through its outbox and
answers 202; the collection's `status` says how far it got (approving → approved).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal
from urllib.parse import urlencode

from aiohttp import web

from common import jsontext
from common.jsontext import path_key
from common.messages import SchemaCommand
from gateway.auth import principal
from gateway.clusters import int_param
from gateway.deps import DEPS
from gateway.document_filters import Field, parse_filters
from gateway.errors import ApiError
from gateway.repo.schemas import (
    collection_status,
    collections_named,
    documents,
    list_schemas,
    schema,
    send_command,
    staged_documents,
)
from gateway.upload_rules import check_collection, check_owner
from gateway.views import parse_id, scope

MAX_PAGE = 500


def _summary(row: Any) -> dict[str, Any]:
    decision = row["decision"] or {}
    return {
        "id": str(row["id"]),
        "owner": row["owner"],
        "name": row["name"],
        "name_source": row["name_source"],
        "status": row["status"],
        "storage": row["storage"],
        "table": f"collections.{row['table_name']}" if row["table_name"] else None,
        "document_count": row["document_count"],
        "staged": row["staged"],
        "decision": decision,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "decided_at": row["decided_at"].isoformat() if row["decided_at"] else None,
        "decided_by": row["decided_by"],
        "documents_url": f"/api/v1/collections/{row['name']}/documents?"
        + urlencode({"owner": row["owner"]}),
    }


async def handle_schemas(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, 1, 200)
    offset = int_param(request, "offset", 0, 0, 1_000_000)
    rows = await list_schemas(request.app[DEPS].pool, scope(request), limit, offset)
    return web.json_response({"schemas": [_summary(r) for r in rows], "limit": limit})


async def handle_schema(request: web.Request) -> web.Response:
    collection_id = parse_id(request, "schema_id", "schema id")
    row = await schema(request.app[DEPS].pool, scope(request), collection_id)
    if row is None:
        raise ApiError(404, "schema not found")
    return web.Response(
        body=jsontext.dumps(
            {
                **_summary(row),
                "fields": row["fields"],
                "json_schema": jsontext.loads(row["json_schema"]),
                "proposed_ddl": row["proposed_ddl"],
                "columns": row["columns"],
                "migrations": row["migrations"],
            }
        ),
        content_type="application/json",
    )


async def _command(
    request: web.Request,
    action: Literal["approve", "reject", "approve_migration"],
    migration: int | None = None,
) -> web.Response:
    deps = request.app[DEPS]
    collection_id = parse_id(request, "schema_id", "schema id")
    row = await collection_status(deps.pool, scope(request), collection_id)
    if row is None:
        raise ApiError(404, "schema not found")
    if migration is None and row["status"] in ("approved", "rejected"):
        raise ApiError(409, f"this collection is {row['status']} already", state=row["status"])
    if migration is not None:
        state = (row["migrations"] or {}).get(str(migration))
        if state is None:
            raise ApiError(404, f"this collection has no migration {migration}")
        if state == "applied":
            raise ApiError(409, f"migration {migration} is applied already")
        if row["status"] not in ("approved", "rejected"):
            raise ApiError(409, "the collection's table does not exist yet")
    caller = principal(request)
    actor = f"key:{caller.key_id}" if caller.key_id else "admin"
    command = SchemaCommand(
        collection_id=collection_id,
        action=action,
        migration=migration,
        actor=actor,
    )
    async with deps.pool.acquire() as conn:
        await send_command(conn, command)
    deps.wake_relay()
    busy = {"approve": "approving", "reject": "rejecting"}.get(action, row["status"])
    return web.json_response(
        {"id": str(collection_id), "action": action, "migration": migration, "status": busy},
        status=202,
        headers={"Location": f"/api/v1/schemas/{collection_id}"},
    )


async def handle_approve(request: web.Request) -> web.Response:
    return await _command(request, "approve")


async def handle_reject(request: web.Request) -> web.Response:
    return await _command(request, "reject")


async def handle_approve_migration(request: web.Request) -> web.Response:
    raw = request.match_info["n"]
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise ApiError(400, "the migration number must be a positive integer")
    return await _command(request, "approve_migration", int(raw))


def _fields(row: Any) -> dict[str, Field]:
    """The collection's known fields by path (a table's from its columns)."""
    if row["storage"] == "table" and row["columns"]:
        return {
            path_key(c["path"]): Field(path_key(c["path"]), c["path"], c["type"], c["column"])
            for c in row["columns"]
        }
    return {f["path"]: Field(f["path"], f["keys"], f["type"], None) for f in row["fields"] or []}


async def _collection(request: web.Request) -> Any:
    name = check_collection(request.match_info["name"])
    owner_param = request.query.get("owner")
    owner = check_owner(owner_param) if owner_param else None
    rows = await collections_named(request.app[DEPS].pool, scope(request), name or "", owner)
    if not rows:
        raise ApiError(404, "collection not found")
    if len(rows) > 1:
        raise ApiError(
            409,
            "several owners have a collection of this name: say which with ?owner=",
            owners=sorted(r["owner"] for r in rows),
        )
    return rows[0]


def _merge(target: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


def _document(collection: Any, record: Any) -> dict[str, Any]:
    """A row as the document it holds: columns back at their key paths (a table row does not
    tell an absent key from a null: both are left out), and the overflow merged in."""
    if collection["storage"] != "table":
        document: dict[str, Any] = jsontext.loads(record["document"])
        return document
    values = jsontext.loads(record["columns"])
    document = {}
    for column in collection["columns"] or []:
        value = values.get(column["column"])
        if value is None:
            continue
        target = document
        for key in column["path"][:-1]:
            target = target.setdefault(key, {})
        target[column["path"][-1]] = value
    if record["overflow"]:
        _merge(document, jsontext.loads(record["overflow"]))
    return document


def _row_json(collection: Any, record: Any) -> dict[str, Any]:
    return {
        "system_id": str(record["_upload_id"]),
        "row_id": record["_id"],
        "created_at": record["_created_at"].isoformat(),
        "document": _document(collection, record),
    }


async def handle_documents(request: web.Request) -> web.Response:
    """Documents of a collection: rows of its table, or staged ones before it has one."""
    deps = request.app[DEPS]
    collection = await _collection(request)
    limit = int_param(request, "limit", 50, 1, MAX_PAGE)
    filters = parse_filters(request.query.getall("where", []), _fields(collection))
    if collection["table_name"] is None:
        if filters:
            raise ApiError(409, "filters apply once the collection has its table (approve it)")
        after_raw = request.query.get("after")
        after = _uuid(after_raw) if after_raw else None
        rows = await staged_documents(deps.pool, scope(request), collection["id"], limit, after)
        items = [
            {
                "system_id": str(r["upload_id"]),
                "row_id": None,
                "created_at": r["created_at"].isoformat(),
                "document": jsontext.loads(r["document"]),
            }
            for r in rows
        ]
        next_after: object = items[-1]["system_id"] if len(items) == limit else None
    else:
        after_row = int_param(request, "after", 0, 0, 2**62)
        rows = await documents(deps.pool, collection, filters, limit, after_row)
        items = [_row_json(collection, r) for r in rows]
        next_after = items[-1]["row_id"] if len(items) == limit else None
    return web.Response(
        body=jsontext.dumps(
            {
                "collection": collection["name"],
                "collection_id": str(collection["id"]),
                "owner": collection["owner"],
                "status": collection["status"],
                "storage": collection["storage"] if collection["table_name"] else "staged",
                "documents": items,
                "next_after": next_after,
            },
        ),
        content_type="application/json",
    )


async def handle_document(request: web.Request) -> web.Response:
    """One document of a collection, by its upload's id."""
    deps = request.app[DEPS]
    collection = await _collection(request)
    upload_id = parse_id(request, "object_id", "object id")
    if collection["table_name"] is None:
        rows = await staged_documents(
            deps.pool, scope(request), collection["id"], 1, None, upload_id
        )
        if not rows:
            raise ApiError(404, "document not found in this collection")
        item = {
            "system_id": str(upload_id),
            "row_id": None,
            "placement": "staged",
            "document": jsontext.loads(rows[0]["document"]),
        }
    else:
        found = await documents(deps.pool, collection, [], 1, 0, upload_id)
        if not found:
            raise ApiError(404, "document not found in this collection")
        item = {**_row_json(collection, found[0]), "placement": collection["storage"]}
    return web.Response(
        body=jsontext.dumps({"collection": collection["name"], **item}),
        content_type="application/json",
    )


def _uuid(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "after must be a system id (UUID) before the table exists") from None
