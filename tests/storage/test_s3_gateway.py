"""The gateway on S3: failures mid-upload, retries, an outage, presigned reads, the sweeper.

The store is a real S3-API server (moto), reached through an HTTP proxy that fails chosen
requests as S3 does (tests/storage/s3fault.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from common.db import open_pool
from common.settings import CommonSettings
from common.storage import Storage, chunks_of, key_for
from gateway.sweep import Sweeper
from tests.conftest import make_png
from tests.integration.test_ingest import form, stored_objects
from tests.observability.harness import wait_until
from tests.storage.s3fault import S3Faults

MiB = 1024 * 1024
HOUR = 3600.0


@pytest.fixture
def storage_backend() -> str:
    return "s3"


@pytest.fixture(scope="module")
def large_png() -> bytes:
    return make_png(21, (1800, 1800))  # ~9.7 MB of noise: two parts of 5 MiB


async def storage_is_clean(storage: Storage) -> bool:
    return not await storage.temp_files()


def swept(kind: str) -> float:
    return REGISTRY.get_sample_value("storage_swept_total", {"kind": kind}) or 0.0


async def test_a_part_failing_mid_upload_leaves_no_object_and_no_rows(
    start_gateway: Callable[..., Any],
    faults: S3Faults,
    storage: Storage,
    db: asyncpg.Connection,
    large_png: bytes,
) -> None:
    faults.parts_from = 2  # the second part fails on every attempt
    endpoint = f"http://127.0.0.1:{faults.port}"
    async with start_gateway(s3_endpoint_url=endpoint) as gateway:
        response = await gateway.client.post("/api/v1/ingest", data=form(("big.png", large_png)))
        body = await response.json()
    assert response.status == 503, body
    assert body["error"] == "storage cannot accept the upload now"
    assert response.headers["Retry-After"]
    assert faults.parts_sent().count(2) == 3  # botocore retried it (S3_MAX_ATTEMPTS=3)
    assert any(s.startswith("DELETE") and "uploadId=" in s for s in faults.seen)  # aborted
    assert await db.fetchval("SELECT count(*) FROM content") == 0
    assert await db.fetchval("SELECT count(*) FROM uploads") == 0
    assert await storage.temp_files() == []
    assert await stored_objects(storage) == []


async def test_parts_refused_once_with_slowdown_are_retried_when_the_store_recovers(
    start_gateway: Callable[..., Any],
    faults: S3Faults,
    storage: Storage,
    db: asyncpg.Connection,
    large_png: bytes,
) -> None:
    faults.parts_from, faults.part_attempts, faults.status = 1, 1, 503
    endpoint = f"http://127.0.0.1:{faults.port}"
    async with start_gateway(s3_endpoint_url=endpoint) as gateway:
        response = await gateway.client.post("/api/v1/ingest", data=form(("big.png", large_png)))
        assert response.status == 202, await response.text()
    assert faults.failed == 2 and sorted(faults.parts_sent()) == [1, 1, 2, 2]
    key = key_for(hashlib.sha256(large_png).hexdigest())
    assert await storage.read(key, limit=len(large_png)) == large_png
    assert await db.fetchval("SELECT storage_key FROM content") == key
    assert await storage.temp_files() == []


async def test_an_unreachable_store_answers_503_and_health_says_so_until_it_is_back(
    start_gateway: Callable[..., Any],
    faults: S3Faults,
    db: asyncpg.Connection,
    large_png: bytes,
) -> None:
    endpoint = f"http://127.0.0.1:{faults.port}"
    async with start_gateway(s3_endpoint_url=endpoint) as gateway:
        faults.down = True
        for image in (large_png[:100_000], large_png):  # one part, and a multipart upload
            refused = await gateway.client.post("/api/v1/ingest", data=form(("a.png", image)))
            assert refused.status == 503 and refused.headers["Retry-After"]
        ready = await gateway.client.get("/ready")
        assert ready.status == 503 and (await ready.json())["checks"]["storage"] is False
        health = await gateway.client.get("/health")
        body = await health.json()
        assert health.status == 503 and body["storage"]["status"] == "down"
        assert body["storage"]["backend"] == "s3" and "storage down" in body["reasons"]
        assert await db.fetchval("SELECT count(*) FROM uploads") == 0
        faults.down = False
        accepted = await gateway.client.post("/api/v1/ingest", data=form(("a.png", large_png)))
        assert accepted.status == 202
        health = await gateway.client.get("/health")
        section = (await health.json())["storage"]
        assert section["status"] == "ok" and section["free_bytes"] is None
        assert "bucket" not in section  # where the store is: for admin keys only


async def test_content_redirects_to_a_presigned_url_when_configured(
    start_gateway: Callable[..., Any],
) -> None:
    image = make_png(3, (64, 64))
    async with start_gateway(s3_presigned_read_seconds=120) as gateway:
        response = await gateway.client.post("/api/v1/ingest", data=form(("my pic.png", image)))
        [upload_id] = (await response.json())["system_ids"]
        answer = await gateway.client.get(
            f"/api/v1/objects/{upload_id}/content", allow_redirects=False
        )
        assert answer.status == 307
        location = answer.headers["Location"]
        assert "X-Amz-Expires=120" in location
    async with aiohttp.ClientSession() as session, session.get(location) as direct:
        assert direct.status == 200 and await direct.read() == image
        assert direct.headers["Content-Type"] == "image/png"
        assert "my pic.png" in direct.headers["Content-Disposition"]


async def test_the_sweeper_removes_orphans_and_abandoned_uploads_and_keeps_the_rest(
    start_gateway: Callable[..., Any],
    storage: Storage,
    storage_settings: dict[str, Any],
    database_url: str,
    large_png: bytes,
) -> None:
    async with start_gateway() as gateway:
        kept = make_png(4, (64, 64))
        response = await gateway.client.post("/api/v1/ingest", data=form(("kept.png", kept)))
        assert response.status == 202
    orphan = await storage.put(chunks_of(b"an orphan: its ingest never committed"))
    abandoned = storage.writer()  # a gateway killed mid-upload: a multipart upload open
    for start in range(0, len(large_png), MiB):
        await abandoned.write(large_png[start : start + MiB])
    await asyncio.sleep(0.2)
    before = {kind: swept(kind) for kind in ("object", "multipart")}
    settings = CommonSettings(database_url=database_url, **storage_settings)
    async with open_pool(settings, min_size=1, max_size=2) as pool:
        assert (await Sweeper(pool, storage, HOUR).sweep()) is not None  # all too young
        assert orphan.key in await stored_objects(storage)
        result = await Sweeper(pool, storage, HOUR).sweep(0)
    assert result is not None and result.objects == 1 and result.temp == 1
    assert swept("object") - before["object"] == 1
    assert swept("multipart") - before["multipart"] == 1
    assert await stored_objects(storage) == [key_for(hashlib.sha256(kept).hexdigest())]
    assert await storage.temp_files() == []
    await abandoned.abort()


async def test_a_client_gone_mid_upload_leaves_nothing_in_the_store(
    start_gateway: Callable[..., Any],
    storage: Storage,
    db: asyncpg.Connection,
    large_png: bytes,
) -> None:
    async with start_gateway() as gateway:
        boundary = "cut-off-boundary"

        async def body() -> AsyncIterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files[]";'
                f' filename="cut.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            for start in range(0, 7 * MiB, MiB):  # more than a part: a multipart upload
                yield large_png[start : start + MiB]
            raise ConnectionResetError("the client went away")

        url = gateway.client.make_url("/api/v1/ingest")
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        async with aiohttp.ClientSession() as session:
            with pytest.raises((aiohttp.ClientError, ConnectionResetError)):
                await session.post(url, data=body(), headers=headers)
        await wait_until(lambda: storage_is_clean(storage), timeout=20, what="the abort")
    assert await storage.temp_files() == []
    assert await stored_objects(storage) == []
    assert await db.fetchval("SELECT count(*) FROM uploads") == 0
