"""Hostile JSON: SQL in keys, absurd nesting and sizes, broken text, duplicate keys, numbers
beyond every range. Each gets a clear outcome; nothing is lost, the schemer keeps working, and
no table appears outside the `collections` schema."""

from __future__ import annotations

import io
from typing import Any

import asyncpg
import orjson
import pytest

from tests.integration.conftest import Gateway
from tests.schemer.conftest import decide, ingest, read_documents, schema_of, wait_job

HOSTILE_KEYS = [
    "a; DROP TABLE uploads; --",
    "x'); DELETE FROM content; --",
    'double "quoted" key',
    "back\\slash",
    "k" * 10_000,
    "Name",
    "name",
    "NAME!",
    "select",
    "user",
    "1st place",
    "",
    "_id",
    "document",
    "名前",
    "a.b",
]

TABLES = """SELECT n.nspname || '.' || c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            ORDER BY 1"""


async def tables(db: asyncpg.Connection) -> list[str]:
    return [r[0] for r in await db.fetch(TABLES)]


async def test_keys_full_of_sql_become_working_harmless_columns_when_approved(
    gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    before = await tables(db)
    documents = [{key: f"{n}:{i}" for i, key in enumerate(HOSTILE_KEYS)} for n in range(5)]
    async with start_schemer():
        job = await ingest(gateway, documents, owner="mallory", collection="hostile")
        assert (await wait_job(gateway, job["job_id"]))["status"] == "done"
        [summary] = (await (await gateway.client.get("/api/v1/schemas")).json())["schemas"]
        assert summary["name"] == "hostile" and summary["storage"] == "table"
        detail = await schema_of(gateway, summary["id"])
        assert len(detail["fields"]) == len(HOSTILE_KEYS)
        approved = await decide(gateway, summary["id"], "approve")
        columns = [c["column"] for c in approved["columns"]]
        assert len(set(columns)) == len(HOSTILE_KEYS)
        assert all(0 < len(c.encode()) <= 63 for c in columns)
        back = await read_documents(gateway, "hostile")
        assert sorted(orjson.dumps(d["document"], option=orjson.OPT_SORT_KEYS) for d in back) == (
            sorted(orjson.dumps(d, option=orjson.OPT_SORT_KEYS) for d in documents)
        )
        # A filter on a hostile key compiles to a parameterised condition.
        response = await gateway.client.get(
            "/api/v1/collections/hostile/documents",
            params={"where": "a; DROP TABLE uploads; --=2:0"},
        )
        assert response.status == 200, await response.text()
        assert [d["document"]["name"] for d in (await response.json())["documents"]] == ["2:6"]
    after = await tables(db)
    assert set(after) - set(before) == {f"collections.{approved['table'].split('.', 1)[1]}"}
    assert await db.fetchval("SELECT count(*) FROM uploads") == 5
    owned = await db.fetch(
        """SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE pg_get_userbyid(c.relowner) = 'mammoth_schemer' AND c.relkind = 'r'"""
    )
    assert owned and {r[0] for r in owned} == {"collections"}


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (nested(100_000), 400, "nested more than"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested more than"),
        (b'{"a": "\\xff"}', 400, "invalid JSON"),
        (b'{"a": "\xff\xfe"}', 400, "invalid JSON"),
        (b'{"a": "\\ud800"}', 400, "invalid JSON"),
        (b'{"a": 1e400}', 400, "invalid JSON"),
        (b'{"a": "\\u0000"}', 400, "NUL"),
        (b"[" + b",".join([b'{"k": "' + b"x" * 1000 + b'"}'] * 52_000) + b"]", 413, "limit"),
    ],
    ids=[
        "100k-objects",
        "100k-arrays",
        "bad-escape",
        "bad-utf8",
        "lone-surrogate",
        "beyond-float",
        "nul",
        "50MB-array",
    ],
)
async def test_hostile_body_gets_a_clear_refusal_and_the_schemer_carries_on_when_posted(
    body: bytes,
    status: int,
    words: str,
    gateway: Gateway,
    start_schemer: Any,
    db: asyncpg.Connection,
) -> None:
    async with start_schemer():
        response = await gateway.client.post(
            "/api/v1/ingest", data=io.BytesIO(body), headers={"Content-Type": "application/json"}
        )
        assert response.status == status, await response.text()
        assert words in (await response.json())["error"]
        assert await db.fetchval("SELECT count(*) FROM uploads") == 0
        job = await ingest(gateway, {"after": "the hostile one"})
        assert (await wait_job(gateway, job["job_id"]))["status"] == "done"


async def test_duplicate_keys_keep_the_last_and_huge_integers_stay_exact_when_stored(
    gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    big = 123456789012345678901234567890
    raw = (
        b'[{"id": 1, "id": 2, "n": 123456789012345678901234567890, "x": 2.5e10},'
        b' {"id": 3, "n": 5, "x": -2.5}]'
    )
    async with start_schemer():
        response = await gateway.client.post(
            "/api/v1/ingest?collection=numbers",
            data=raw,
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 202, await response.text()
        job = await response.json()
        assert (await wait_job(gateway, job["job_id"]))["status"] == "done"
        stored = await (
            await gateway.client.get(f"/api/v1/objects/{job['system_ids'][0]}/content")
        ).read()
        assert stored.decode().count("123456789012345678901234567890") == 1
        [summary] = (await (await gateway.client.get("/api/v1/schemas")).json())["schemas"]
        detail = await schema_of(gateway, summary["id"])
        types = {f["path"]: f["type"] for f in detail["fields"]}
        assert types == {"id": "bigint", "n": "numeric", "x": "double precision"}
        await decide(gateway, summary["id"], "approve")
        back = {d["system_id"]: d["document"] for d in await read_documents(gateway, "numbers")}
        first, second = (back[u] for u in job["system_ids"])
        assert first == {"id": 2, "n": big, "x": 2.5e10}
        assert second == {"id": 3, "n": 5, "x": -2.5}
        response = await gateway.client.get(
            "/api/v1/collections/numbers/documents", params={"where": f"n>={big}"}
        )
        assert [d["document"]["id"] for d in (await response.json())["documents"]] == [2]
