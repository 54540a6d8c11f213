"""Job status and objects."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg
import pytest

from common.storage import Storage, key_for
from tests.conftest import make_jpeg
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form

pytestmark = pytest.mark.both_storage_backends


async def test_status_derives_from_content_stages_when_processing_advances(
    gateway: Gateway,
    db: asyncpg.Connection,
) -> None:
    images = [make_jpeg(i) for i in range(3)]
    response = await gateway.client.post(
        "/api/v1/ingest", data=form(*((f"{i}.jpg", img) for i, img in enumerate(images)))
    )
    job = await response.json()
    url = f"/api/v1/ingest/{job['job_id']}/status"

    async def status() -> dict[str, Any]:
        result: dict[str, Any] = await (await gateway.client.get(url)).json()
        return result

    first = await status()
    assert first["status"] == "queued"
    assert first["progress"] == {"total": 3, "queued": 3}
    assert [u["system_id"] for u in first["uploads"]] == job["system_ids"]
    assert first["trace_id"] is None or len(first["trace_id"]) == 32

    sha = [hashlib.sha256(i).hexdigest() for i in images]
    await db.execute("UPDATE content SET stage = 'embedded' WHERE sha256 = $1", sha[0])
    assert (await status())["status"] == "processing"
    await db.execute("UPDATE content SET stage = 'clustered' WHERE sha256 = ANY($1)", sha[:2])
    await db.execute("UPDATE content SET stage = 'failed', error = 'x' WHERE sha256 = $1", sha[2])
    final = await status()
    assert final["status"] == "partial"
    assert final["progress"] == {"total": 3, "done": 2, "failed": 1}


async def test_status_answers_404_and_400_when_job_is_unknown_or_malformed(
    gateway: Gateway,
) -> None:
    unknown = await gateway.client.get(f"/api/v1/ingest/{uuid.uuid4()}/status")
    assert unknown.status == 404
    assert (await unknown.json())["error"] == "job not found"
    malformed = await gateway.client.get("/api/v1/ingest/not-a-uuid/status")
    assert malformed.status == 400
    assert "request_id" in await malformed.json()


async def test_objects_describe_and_stream_content_when_uploaded(gateway: Gateway) -> None:
    image = make_jpeg(5, size=(400, 400))
    response = await gateway.client.post(
        "/api/v1/ingest", data=form(("holiday photo.jpg", image), owner="gina", comments="hi")
    )
    [system_id] = (await response.json())["system_ids"]
    meta = await (await gateway.client.get(f"/api/v1/objects/{system_id}")).json()
    assert meta["filename"] == "holiday photo.jpg"
    assert meta["owner"] == "gina" and meta["comments"] == "hi"
    assert meta["sha256"] == hashlib.sha256(image).hexdigest()
    assert meta["size_bytes"] == len(image)
    assert meta["kind"] == "image" and meta["status"] == "queued"
    content = await gateway.client.get(f"/api/v1/objects/{system_id}/content")
    assert content.status == 200
    assert content.headers["Content-Type"] == "image/jpeg"
    assert "holiday" in content.headers["Content-Disposition"]
    assert await content.read() == image


async def test_content_answers_ranges_and_validators_when_a_player_seeks(
    gateway: Gateway, storage: Storage
) -> None:
    image = make_jpeg(6, size=(500, 500))
    response = await gateway.client.post("/api/v1/ingest", data=form(("seek.jpg", image)))
    [system_id] = (await response.json())["system_ids"]
    url = f"/api/v1/objects/{system_id}/content"
    size = len(image)
    cases = {
        "bytes=0-99": (0, 100),
        "bytes=100-": (100, size),
        "bytes=-50": (size - 50, size),
        f"bytes=10-{size * 2}": (10, size),
    }
    for header, (start, stop) in cases.items():
        part = await gateway.client.get(url, headers={"Range": header})
        assert part.status == 206, header
        assert part.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert await part.read() == image[start:stop]
    beyond = await gateway.client.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
    assert "request_id" in await beyond.json()
    for odd in ("bytes=abc", "bytes=0-1,5-9", "pages=1-2"):  # not served as a range: whole
        whole = await gateway.client.get(url, headers={"Range": odd})
        assert whole.status == 200 and await whole.read() == image, odd
    head = await gateway.client.head(url)
    assert head.status == 200 and int(head.headers["Content-Length"]) == size
    etag = head.headers["ETag"]
    assert etag == f'"{hashlib.sha256(image).hexdigest()}"'
    cached = await gateway.client.get(url, headers={"If-None-Match": etag})
    assert cached.status == 304
    # The bytes gone from the store (a row without its object): 410, never a 5xx.
    await storage.delete(key_for(hashlib.sha256(image).hexdigest()))
    gone = await gateway.client.get(url)
    assert gone.status == 410 and "missing" in (await gone.json())["error"]


async def test_objects_return_json_document_when_upload_is_json(gateway: Gateway) -> None:
    response = await gateway.client.post("/api/v1/ingest", json={"b": [1, 2], "a": "x"})
    [system_id] = (await response.json())["system_ids"]
    content = await gateway.client.get(f"/api/v1/objects/{system_id}/content")
    assert content.status == 200
    assert await content.json() == {"b": [1, 2], "a": "x"}


async def test_objects_answer_404_and_400_when_unknown_or_malformed(gateway: Gateway) -> None:
    for path in (f"/api/v1/objects/{uuid.uuid4()}", f"/api/v1/objects/{uuid.uuid4()}/content"):
        assert (await gateway.client.get(path)).status == 404
    for path in ("/api/v1/objects/..%2F..%2Fetc%2Fpasswd", "/api/v1/objects/123/content"):
        assert (await gateway.client.get(path)).status in (400, 404)
    missing = await gateway.client.get("/api/v1/nope")
    assert missing.status == 404
    assert "request_id" in await missing.json()
    wrong_method = await gateway.client.delete("/api/v1/ingest")
    assert wrong_method.status == 405
