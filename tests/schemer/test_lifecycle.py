"""A collection's life: grouping, every upload its own document, reject, auto-approval,
migrations, filters, failures and the first version of the event."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import asyncpg
import orjson

from common.messages import JsonIngestedV1
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form
from tests.schemer.conftest import (
    decide,
    ingest,
    job_status,
    read_documents,
    schema_of,
    wait_for,
    wait_job,
)
from tests.search.test_auth import KEYS, READER, ROOT, auth

PEOPLE = [{"name": f"p{i}", "age": 20 + i, "city": ["Oslo", "Lima"][i % 2]} for i in range(10)]


async def collections(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM json_collections ORDER BY created_at"))


async def test_every_json_upload_reaches_its_owners_collection_when_the_bytes_are_shared(
    gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    same = {"sku": "x-1", "price": 3}
    async with start_schemer():
        ann = await ingest(gateway, [same, same, {"sku": "x-2", "price": 4}], owner="ann")
        bob = await ingest(gateway, same, owner="bob")
        for job in (ann, bob):
            status = await wait_job(gateway, job["job_id"])
            assert status["status"] == "done"
            assert all(u["document"]["placement"] == "staged" for u in status["uploads"])
    assert await db.fetchval("SELECT count(*) FROM content WHERE kind = 'json'") == 2
    rows = await db.fetch(
        """SELECT jc.owner, count(*) AS n FROM json_documents d
           JOIN json_collections jc ON jc.id = d.collection_id GROUP BY 1 ORDER BY 1"""
    )
    assert [(r["owner"], r["n"]) for r in rows] == [("ann", 3), ("bob", 1)]


async def test_payload_envelope_is_one_upload_per_element_when_sent_as_body_or_field(
    gateway: Gateway,
) -> None:
    body = await ingest(gateway, {"payload": PEOPLE[:3]})
    assert len(body["system_ids"]) == 3
    response = await gateway.client.post(
        "/api/v1/ingest", data=form(payload=orjson.dumps({"payload": PEOPLE[:4]}).decode())
    )
    assert response.status == 202 and len((await response.json())["system_ids"]) == 4
    response = await gateway.client.post(
        "/api/v1/ingest", data=form(payload=orjson.dumps(PEOPLE[:2]).decode())
    )
    assert response.status == 202 and len((await response.json())["system_ids"]) == 2
    # A document whose one key is "payload" but holds no list stays one document.
    assert len((await ingest(gateway, {"payload": {"a": 1}}))["system_ids"]) == 1


async def test_idempotency_key_tells_requests_apart_when_only_the_collection_differs(
    gateway: Gateway,
) -> None:
    first = await ingest(gateway, PEOPLE[0], collection="a", idempotency_key="k-1")
    again = await ingest(gateway, PEOPLE[0], collection="a", idempotency_key="k-1")
    assert again["job_id"] == first["job_id"]
    other = await gateway.client.post(
        "/api/v1/ingest", json=PEOPLE[0], params={"collection": "b", "idempotency_key": "k-1"}
    )
    assert other.status == 409


async def test_collection_name_is_refused_when_not_a_lower_case_identifier(
    gateway: Gateway,
) -> None:
    for bad in ("Users", "1users", "us-ers", "u" * 64, "robert'); DROP TABLE uploads;--"):
        response = await gateway.client.post(
            "/api/v1/ingest", json=PEOPLE[0], params={"collection": bad}
        )
        assert response.status == 400, bad
        assert "collection" in (await response.json())["error"]
    response = await gateway.client.post(
        "/api/v1/ingest", data=form(payload=orjson.dumps(PEOPLE[0]).decode(), collection="Bad")
    )
    assert response.status == 400


async def test_documents_join_the_most_alike_collection_when_unnamed(
    gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    async with start_schemer(schema_match_threshold=0.5):
        # One after the other: which collection a document joins depends on those that
        # exist when it is placed (all four at once may be placed in any order).
        for documents in [
            PEOPLE[:5],
            PEOPLE[5:],
            # Two of three keys shared, one new: Jaccard 2/4 = 0.5 joins.
            {"name": "q", "age": 1, "email": "q@x"},
            # Nothing in common: a collection of its own.
            {"sku": "a", "price": 1},
        ]:
            job = await ingest(gateway, documents)
            assert (await wait_job(gateway, job["job_id"]))["status"] == "done"
    found = await collections(db)
    assert [(c["name"], c["document_count"], c["name_source"]) for c in found] == [
        # Named after the first keys as jsonb orders them (shorter keys first).
        ("age_city_name", 11, "generated"),
        ("sku_price", 1, "generated"),
    ]


async def test_rejected_collection_is_jsonb_and_filters_compile_to_containment_and_ranges(
    gateway: Gateway, start_schemer: Any
) -> None:
    async with start_schemer():
        job = await ingest(gateway, PEOPLE, collection="people")
        await wait_job(gateway, job["job_id"])
        [summary] = (await (await gateway.client.get("/api/v1/schemas")).json())["schemas"]
        assert summary["storage"] == "table"
        rejected = await decide(gateway, summary["id"], "reject")
        assert rejected["storage"] == "jsonb" and rejected["status"] == "rejected"
        again = await gateway.client.post(f"/api/v1/schemas/{summary['id']}/approve")
        assert again.status == 409
        assert len(await read_documents(gateway, "people")) == 10
        found = await read_documents(gateway, "people", where=["city=Oslo", "age>=24"])
        assert sorted(d["document"]["name"] for d in found) == ["p4", "p6", "p8"]
        found = await read_documents(gateway, "people", where="city!=Oslo")
        assert len(found) == 5
        for bad, words in [
            ("nope=1", "no field"),
            ("age>=old", "not a bigint"),
            ("age", "not <path><operator><value>"),
        ]:
            response = await gateway.client.get(
                "/api/v1/collections/people/documents", params={"where": bad}
            )
            assert response.status == 400 and words in (await response.json())["error"]


async def test_auto_approval_creates_the_table_and_later_documents_go_straight_in(
    gateway: Gateway, start_schemer: Any
) -> None:
    async with start_schemer(schema_auto_approve=True):
        job = await ingest(gateway, PEOPLE[:4], collection="people")
        await wait_job(gateway, job["job_id"])
        [summary] = (await (await gateway.client.get("/api/v1/schemas")).json())["schemas"]

        async def approved() -> Any:
            body = await schema_of(gateway, summary["id"])
            return body if body["status"] == "approved" else None

        detail = await wait_for(approved, what="auto-approved")
        assert detail["decided_by"] == "auto-approve" and detail["staged"] == 0
        job = await ingest(gateway, PEOPLE[4:], collection="people")
        status = await wait_job(gateway, job["job_id"])
        assert {u["document"]["placement"] for u in status["uploads"]} == {"table"}
        assert len(await read_documents(gateway, "people", where="age<25")) == 5


async def test_misfits_land_in_overflow_and_an_approved_migration_moves_them_into_columns(
    gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    async with start_schemer(schema_auto_approve=True):
        job = await ingest(gateway, PEOPLE, collection="people")
        await wait_job(gateway, job["job_id"])
        collection_id = str(await db.fetchval("SELECT id FROM json_collections"))

        async def approved() -> bool:
            return bool((await schema_of(gateway, collection_id))["status"] == "approved")

        await wait_for(approved, what="auto-approved")
        odd = [
            {"name": "z1", "age": 30.5, "city": "Oslo", "email": "z1@x"},  # wider type, new key
            {"name": "z2", "age": "old", "city": "Lima"},  # a string where numbers are
        ]
        job = await ingest(gateway, odd, collection="people")
        status = await wait_job(gateway, job["job_id"])
        assert [u["document"]["overflow"] for u in status["uploads"]] == [True, True]
        detail = await schema_of(gateway, collection_id)
        [migration] = detail["migrations"]
        changes = {c["column"]: (c["action"], c["type"]) for c in migration["changes"]}
        assert changes == {"email": ("add", "text"), "age": ("widen", "numeric")}
        assert "ADD COLUMN IF NOT EXISTS email text" in migration["ddl"]
        assert "ALTER COLUMN age TYPE numeric" in migration["ddl"]
        # Nothing lost meanwhile: the documents read back whole from columns and overflow.
        by_name = {
            d["document"]["name"]: d["document"] for d in await read_documents(gateway, "people")
        }
        assert by_name["z1"] == odd[0] and by_name["z2"] == odd[1]
        response = await gateway.client.post(
            f"/api/v1/schemas/{collection_id}/migrations/{migration['n']}/approve"
        )
        assert response.status == 202

        async def applied() -> Any:
            body = await schema_of(gateway, collection_id)
            return body if body["migrations"][0]["status"] == "applied" else None

        detail = await wait_for(applied, what="migration applied")
        types = {c["column"]: c["type"] for c in detail["columns"]}
        assert types["email"] == "text" and types["age"] == "numeric"
        table = detail["table"]
        row = await db.fetchrow(f"SELECT age, email, _overflow FROM {table} WHERE name = 'z1'")
        assert (float(row["age"]), row["email"], row["_overflow"]) == (30.5, "z1@x", None)
        row = await db.fetchrow(f"SELECT age, _overflow FROM {table} WHERE name = 'z2'")
        assert row["age"] is None and orjson.loads(row["_overflow"]) == {"age": "old"}
        by_name = {
            d["document"]["name"]: d["document"] for d in await read_documents(gateway, "people")
        }
        assert by_name["z1"] == odd[0] and by_name["z2"] == odd[1]
        again = await gateway.client.post(
            f"/api/v1/schemas/{collection_id}/migrations/{migration['n']}/approve"
        )
        assert again.status == 409


async def test_a_parked_json_event_fails_its_uploads_and_a_requeue_places_them(
    start_gateway: Any, start_schemer: Any, db: asyncpg.Connection, amqp: Any
) -> None:
    async with start_gateway() as gateway:
        job = await ingest(gateway, PEOPLE[:2])
        # No schemer yet: park the event by hand, as the last retry would.
        queue = gateway.json_queue
        channel = await amqp.channel()
        json_queue = await channel.get_queue(queue)

        async def taken() -> Any:
            return await json_queue.get(fail=False)

        message = await wait_for(taken, what="the JSON event")
        await channel.default_exchange.publish(
            aio_pika.Message(
                message.body,
                message_id=message.message_id,
                # As the consumer parks a message after its last attempt.
                headers={
                    "x-error": "database gone",
                    "x-attempt": 3,
                    "x-origin-queue": queue,
                    "x-origin-routing-key": message.routing_key,
                },
            ),
            routing_key=f"{queue}.dlq",
        )
        await message.ack()

        async def failed() -> Any:
            body = await job_status(gateway, job["job_id"])
            return body if body["status"] == "failed" else None

        status = await wait_for(failed, what="uploads failed by the dead letter")
        assert {u["error"] for u in status["uploads"]} == {"database gone"}
        async with start_schemer():
            response = await gateway.client.post(f"/api/v1/admin/dlq/{job['job_id']}/requeue")
            assert response.status == 200, await response.text()
            assert (await wait_job(gateway, job["job_id"]))["status"] == "done"
        await channel.close()


async def test_an_event_of_the_first_version_places_the_jobs_uploads_of_its_content(
    gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    async with start_schemer() as schemer:
        # Ingested as an earlier release would have left it: rows, and a v1 event.
        job = await ingest(gateway, PEOPLE[0])
        await wait_job(gateway, job["job_id"])
        await db.execute("DELETE FROM json_documents")
        row = await db.fetchrow("SELECT id, sha256, size_bytes FROM content")
        event = JsonIngestedV1(
            content_id=row["id"],
            job_id=uuid.UUID(job["job_id"]),
            sha256=row["sha256"],
            size_bytes=row["size_bytes"],
        )
        await schemer.bus.publish(
            event.routing_key, event.to_bytes(), message_id=str(event.message_id)
        )
        await wait_for(
            lambda: db.fetchval("SELECT count(*) FROM json_documents"), what="placed again"
        )


async def test_schema_commands_need_an_admin_and_a_known_collection(
    start_gateway: Any, start_schemer: Any
) -> None:
    async with start_gateway(api_keys=KEYS, admin_api_key=ROOT) as gateway, start_schemer():
        response = await gateway.client.post(
            "/api/v1/ingest", json=PEOPLE, headers=auth(ROOT), params={"collection": "people"}
        )
        job = await response.json()

        async def done() -> Any:
            r = await gateway.client.get(
                f"/api/v1/ingest/{job['job_id']}/status", headers=auth(ROOT)
            )
            return (await r.json())["status"] == "done"

        await wait_for(done, what="done")
        listed = await gateway.client.get("/api/v1/schemas", headers=auth(READER))
        [summary] = (await listed.json())["schemas"]
        url = f"/api/v1/schemas/{summary['id']}/approve"
        assert (await gateway.client.post(url, headers=auth(READER))).status == 403
        missing = f"/api/v1/schemas/{uuid.uuid4()}/approve"
        assert (await gateway.client.post(missing, headers=auth(ROOT))).status == 404
        bad = f"/api/v1/schemas/{summary['id']}/migrations/0/approve"
        assert (await gateway.client.post(bad, headers=auth(ROOT))).status == 400
        none = f"/api/v1/schemas/{summary['id']}/migrations/3/approve"
        assert (await gateway.client.post(none, headers=auth(ROOT))).status == 404
        assert (await gateway.client.post(url, headers=auth(ROOT))).status == 202
