"""POST /api/v1/ingest: what is stored, recorded and published."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp import FormData
from prometheus_client import REGISTRY

from common.storage import Storage, key_for
from tests.conftest import make_jpeg, make_png, read_queue
from tests.integration.conftest import Gateway

pytestmark = pytest.mark.both_storage_backends


def form(*files: tuple[str, bytes], **fields: str) -> FormData:
    data = FormData(quote_fields=False)
    for name, content in files:
        # Large bodies as a stream: aiohttp warns (an error here) on megabytes of raw bytes.
        body = io.BytesIO(content) if len(content) > 1_000_000 else content
        data.add_field("files[]", body, filename=name, content_type="application/octet-stream")
    for key, value in fields.items():
        data.add_field(key, value)
    return data


async def stored_objects(storage: Storage) -> list[str]:
    keys = []
    for prefix in await storage.object_prefixes():
        keys += await storage.objects_older_than(prefix, time.time() + 3600)
    return keys


def objects_written(storage: Storage) -> float:
    labels = {"backend": storage.backend, "outcome": "stored"}
    return REGISTRY.get_sample_value("storage_objects_written_total", labels) or 0.0


async def test_ingest_stores_records_and_publishes_when_one_or_five_images(
    gateway: Gateway,
    db: asyncpg.Connection,
    storage: Storage,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    for count in (1, 5):
        images = [make_jpeg(count * 100 + i) for i in range(count)]
        response = await gateway.client.post(
            "/api/v1/ingest",
            data=form(*((f"img{i}.jpg", img) for i, img in enumerate(images)), owner="alice"),
        )
        assert response.status == 202, await response.text()
        body = await response.json()
        assert set(body) >= {"job_id", "system_ids", "status", "request_id", "created_at"}
        assert body["status"] == "queued"
        assert len(body["system_ids"]) == count
        assert response.headers["X-Request-ID"] == body["request_id"]

        rows = await db.fetch(
            """SELECT u.id, u.filename, u.owner, c.sha256, c.storage_key, c.kind, c.mime_type
               FROM uploads u JOIN content c ON c.id = u.content_id
               WHERE u.job_id = $1 ORDER BY u.position""",
            uuid.UUID(body["job_id"]),
        )
        assert [str(r["id"]) for r in rows] == body["system_ids"]
        for row, image in zip(rows, images, strict=True):
            digest = hashlib.sha256(image).hexdigest()
            assert row["sha256"] == digest
            assert row["kind"] == "image" and row["mime_type"] == "image/jpeg"
            assert row["owner"] == "alice"
            stored = await storage.read(key_for(digest), limit=len(image))
            assert hashlib.sha256(stored).hexdigest() == digest

        events = await read_queue(amqp, gateway.media_queue, expect=count)
        bodies = [orjson.loads(m.body) for m in events]
        assert sorted(b["sha256"] for b in bodies) == sorted(r["sha256"] for r in rows)
        assert all(m.routing_key == "media.ingested.v1" for m in events)
        assert all(b["job_id"] == body["job_id"] for b in bodies)
    assert await storage.temp_files() == []


@pytest.mark.parametrize("large", [False, True], ids=["one-part", "multipart"])
async def test_ingest_stores_once_and_publishes_once_when_same_image_arrives_concurrently(
    gateway: Gateway,
    db: asyncpg.Connection,
    storage: Storage,
    amqp: aio_pika.abc.AbstractRobustConnection,
    large: bool,
) -> None:
    # Large: noise over 5 MiB, more than one S3 part (a multipart upload, then a copy).
    image = make_png(7, (1400, 1400)) if large else make_jpeg(7)
    before = objects_written(storage)
    responses = await asyncio.gather(
        *(gateway.client.post("/api/v1/ingest", data=form(("same.jpg", image))) for _ in range(6))
    )
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [202] * 6
    assert await db.fetchval("SELECT count(*) FROM content") == 1
    assert await db.fetchval("SELECT count(*) FROM uploads") == 6
    assert await stored_objects(storage) == [key_for(hashlib.sha256(image).hexdigest())]
    assert objects_written(storage) - before == 1  # written once; the others found it there
    assert await storage.temp_files() == []
    events = await read_queue(amqp, gateway.media_queue, expect=1, settle=0.5)
    assert len(events) == 1
    for body in bodies:
        status = await (await gateway.client.get(f"/api/v1/ingest/{body['job_id']}/status")).json()
        assert status["uploads"][0]["sha256"] == hashlib.sha256(image).hexdigest()


async def test_ingest_publishes_nothing_new_when_content_is_already_known(
    gateway: Gateway,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    image = make_jpeg(8)
    first = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", image)))
    assert first.status == 202
    assert len(await read_queue(amqp, gateway.media_queue, expect=1)) == 1
    # The content finishes processing; a later upload of the same bytes is done at once.
    await db.execute("UPDATE content SET stage = 'clustered'")
    second = await gateway.client.post("/api/v1/ingest", data=form(("b.jpg", image)))
    assert (await second.json())["status"] == "done"
    assert await read_queue(amqp, gateway.media_queue, expect=0, settle=0.5) == []


async def test_ingest_creates_json_uploads_when_object_and_array(
    gateway: Gateway,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    single = await gateway.client.post("/api/v1/ingest?owner=bob", json={"name": "x", "n": 1})
    assert single.status == 202, await single.text()
    assert len((await single.json())["system_ids"]) == 1
    many = await gateway.client.post(
        "/api/v1/ingest", json=[{"i": i, "tags": ["a", "b"]} for i in range(4)]
    )
    assert many.status == 202
    assert len((await many.json())["system_ids"]) == 4
    payload = await gateway.client.post(
        "/api/v1/ingest", data=form(payload='[{"k": 1}, {"k": 2}]', owner="carol")
    )
    assert payload.status == 202
    assert await db.fetchval("SELECT count(*) FROM content WHERE kind = 'json'") == 7
    assert (
        await db.fetchval(
            "SELECT owner FROM uploads WHERE job_id = $1",
            uuid.UUID((await single.json())["job_id"]),
        )
        == "bob"
    )
    document = await db.fetchval('SELECT document FROM content WHERE document @> \'{"name": "x"}\'')
    assert orjson.loads(document) == {"name": "x", "n": 1}
    # One event per request, naming every JSON upload of it.
    events = await read_queue(amqp, gateway.json_queue, expect=3)
    assert {m.routing_key for m in events} == {"json.ingested.v2"}
    assert sorted(len(orjson.loads(m.body)["upload_ids"]) for m in events) == [1, 2, 4]


async def test_ingest_accepts_mixed_files_and_payload_in_one_request(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    data = form(("a.png", make_png(1)), ("doc.json", b'{"from": "file"}'), payload='{"p": 1}')
    response = await gateway.client.post("/api/v1/ingest", data=data)
    assert response.status == 202, await response.text()
    kinds = await db.fetch("SELECT kind, mime_type FROM content ORDER BY kind")
    assert [(r["kind"], r["mime_type"]) for r in kinds] == [
        ("image", "image/png"),
        ("json", "application/json"),
        ("json", "application/json"),
    ]


async def test_ingest_replays_original_answer_when_idempotent_retry(
    gateway: Gateway,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    image = make_jpeg(11)
    first = await gateway.client.post(
        "/api/v1/ingest", data=form(("a.jpg", image), idempotency_key="k-1", owner="dan")
    )
    again = await gateway.client.post(
        "/api/v1/ingest", data=form(("a.jpg", image), idempotency_key="k-1", owner="dan")
    )
    assert first.status == again.status == 202
    assert await first.json() == await again.json()
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1
    assert await db.fetchval("SELECT count(*) FROM uploads") == 1
    assert len(await read_queue(amqp, gateway.media_queue, expect=1)) == 1


async def test_ingest_answers_one_job_when_same_key_races(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    image = make_jpeg(12)
    responses = await asyncio.gather(
        *(
            gateway.client.post(
                "/api/v1/ingest", data=form(("a.jpg", image), idempotency_key="race")
            )
            for _ in range(5)
        )
    )
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {202}
    assert len({b["job_id"] for b in bodies}) == 1
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


async def test_ingest_conflicts_when_key_reused_for_different_request(
    gateway: Gateway,
    db: asyncpg.Connection,
    storage: Storage,
) -> None:
    first = await gateway.client.post(
        "/api/v1/ingest", data=form(("a.jpg", make_jpeg(13)), idempotency_key="k-2")
    )
    other = make_jpeg(14)
    conflict = await gateway.client.post(
        "/api/v1/ingest", data=form(("b.jpg", other), idempotency_key="k-2")
    )
    assert conflict.status == 409
    body = await conflict.json()
    assert body["existing_job_id"] == (await first.json())["job_id"]
    assert body["request_id"] and body["error"]
    # Nothing of the refused request was kept.
    assert await storage.stat(key_for(hashlib.sha256(other).hexdigest())) is None
    assert await db.fetchval("SELECT count(*) FROM content") == 1
    assert await storage.temp_files() == []


async def test_ingest_scopes_idempotency_keys_per_caller(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    for owner in ("erin", "frank"):
        response = await gateway.client.post(
            "/api/v1/ingest",
            data=form(("a.jpg", make_jpeg(15)), idempotency_key="shared", owner=owner),
        )
        assert response.status == 202
    assert await db.fetchval("SELECT count(*) FROM jobs") == 2


async def test_ingest_carries_one_trace_from_request_to_event_when_traced(
    gateway: Gateway,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    response = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(16))))
    job = await response.json()
    status = await (await gateway.client.get(f"/api/v1/ingest/{job['job_id']}/status")).json()
    trace_id = status["trace_id"]
    assert trace_id is not None and len(trace_id) == 32
    [event] = await read_queue(amqp, gateway.media_queue, expect=1)
    assert event.headers is not None
    assert str(event.headers["traceparent"]).split("-")[1] == trace_id
