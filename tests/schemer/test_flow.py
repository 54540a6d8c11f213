"""JSON through the gateway and the schemer: a collection, its decision, approval, rows."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from tests.integration.conftest import Gateway
from tests.schemer.conftest import wait_for

USERS = [
    {
        "id": i,
        "name": f"user {i}",
        "email": f"user{i}@example.com",
        "age": 20 + i,
        "active": i % 2 == 0,
        "signed_up": f"2024-03-{i + 1:02d}T10:00:00+00:00",
        "address": {"city": ["Oslo", "Lima", "Pune"][i % 3], "zip": f"{1000 + i}"},
        "tags": ["a", "b"][: i % 3],
    }
    for i in range(12)
]


async def ingest(gw: Gateway, documents: Any, **params: str) -> dict[str, Any]:
    response = await gw.client.post("/api/v1/ingest", json=documents, params=params)
    assert response.status == 202, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def job_done(gw: Gateway, job_id: str) -> dict[str, Any] | None:
    response = await gw.client.get(f"/api/v1/ingest/{job_id}/status")
    body: dict[str, Any] = await response.json()
    return body if body["status"] == "done" else None


async def test_users_become_a_table_after_approval_when_stable(
    gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    async with start_schemer():
        job = await ingest(gateway, USERS, owner="ann")
        status = await wait_for(lambda: job_done(gateway, job["job_id"]), what="job done")
        placements = {u["document"]["placement"] for u in status["uploads"]}
        assert placements == {"staged"}
        [collection] = (await (await gateway.client.get("/api/v1/schemas")).json())["schemas"]
        assert collection["status"] == "provisional" and collection["storage"] == "table"
        assert collection["document_count"] == 12 and collection["staged"] == 12
        detail = await (await gateway.client.get(f"/api/v1/schemas/{collection['id']}")).json()
        assert "CREATE TABLE" in detail["proposed_ddl"]
        types = {f["path"]: f["type"] for f in detail["fields"]}
        assert types["age"] == "bigint" and types["signed_up"] == "timestamptz"
        assert types["address.city"] == "text" and types["tags"] == "text[]"
        assert types["active"] == "boolean"
        assert detail["json_schema"]["type"] == "object"
        response = await gateway.client.post(f"/api/v1/schemas/{collection['id']}/approve")
        assert response.status == 202

        async def approved() -> Any:
            body = await (await gateway.client.get(f"/api/v1/schemas/{collection['id']}")).json()
            return body if body["status"] == "approved" else None

        await wait_for(approved, what="approved")
        page = await (
            await gateway.client.get(
                "/api/v1/collections/" + collection["name"] + "/documents", params={"limit": 100}
            )
        ).json()
        got = sorted((d["document"] for d in page["documents"]), key=lambda d: d["id"])
        assert len(got) == 12
        for original, back in zip(USERS, got, strict=True):
            expected = {k: v for k, v in original.items() if v != []}
            back_tags = back.pop("tags", [])
            assert back_tags == original["tags"]
            expected.pop("tags", None)
            assert back == expected
        table = await db.fetchval(
            "SELECT table_name FROM json_collections WHERE id = $1", uuid.UUID(collection["id"])
        )
        count = await db.fetchval(f'SELECT count(*) FROM collections."{table}"')
        assert count == 12
        # later documents go straight into the table
        job2 = await ingest(gateway, [USERS[0] | {"id": 100}], owner="ann")
        status2 = await wait_for(lambda: job_done(gateway, job2["job_id"]), what="second job")
        assert status2["uploads"][0]["document"]["placement"] == "table"
        assert status2["uploads"][0]["document"]["row_id"] is not None
