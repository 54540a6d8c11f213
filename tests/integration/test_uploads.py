"""Slow, stalled and vanishing clients: cut in time, capped, and nothing left behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from common.storage import Storage
from gateway.app import build_app
from gateway.uploads import UPLOAD_SLOTS
from tests.conftest import make_jpeg
from tests.integration.conftest import GatewayServer
from tests.integration.test_ingest import form

# Slow, stalled and vanishing clients leave nothing in the store, whichever it is.
pytestmark = pytest.mark.both_storage_backends

PART = b'--XyZ\r\nContent-Disposition: form-data; name="files[]"; filename="a.jpg"\r\n\r\n'


def cut(reason: str) -> float:
    return REGISTRY.get_sample_value("ingest_uploads_cut_total", {"reason": reason}) or 0.0


async def start_upload(
    client: TestClient[web.Request, web.Application], seed: int = 3
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Headers and the first 20 kB of a 10 MB upload, then nothing more."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
        b"Content-Length: 10000000\r\n\r\n" + PART + make_jpeg(seed, size=(300, 300))[:20000]
    )
    await writer.drain()
    return reader, writer


async def answer(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[int, dict[str, str]]:
    """The status and headers of the response on a raw connection."""
    async with asyncio.timeout(timeout):
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def no_temp_files(storage: Storage) -> list[str]:
    """The uploads in progress once the gateway has had a moment to clean up."""
    for _ in range(100):
        if not await storage.temp_files():
            break
        await asyncio.sleep(0.05)
    return await storage.temp_files()


async def test_ingest_answers_408_and_removes_temp_file_when_the_body_stalls(
    start_gateway: Callable[..., Any],
    db: asyncpg.Connection,
    storage: Storage,
) -> None:
    before = cut("idle_timeout")
    async with start_gateway(upload_idle_timeout_seconds=0.5) as gateway:
        started = time.monotonic()
        reader, writer = await start_upload(gateway.client)
        status, headers = await answer(reader)
        elapsed = time.monotonic() - started
        writer.close()
        assert status == 408
        assert headers["connection"] == "close"
        assert 0.5 <= elapsed < 1.5
        assert await no_temp_files(storage) == []
        assert cut("idle_timeout") == before + 1
        # The gateway still takes uploads.
        ok = await gateway.client.post("/api/v1/ingest", data=form(("ok.jpg", make_jpeg(4))))
        assert ok.status == 202
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


async def test_ingest_answers_408_when_a_trickling_body_takes_too_long(
    start_gateway: Callable[..., Any],
    storage: Storage,
) -> None:
    async with start_gateway(upload_idle_timeout_seconds=0.5, upload_timeout_seconds=1) as gw:
        started = time.monotonic()
        reader, writer = await start_upload(gw.client)

        async def trickle() -> None:
            while True:
                await asyncio.sleep(0.1)
                writer.write(b"\x00" * 100)  # always something new: never idle

        dripping = asyncio.create_task(trickle())
        try:
            status, _ = await answer(reader)
        finally:
            dripping.cancel()
        elapsed = time.monotonic() - started
        writer.close()
        assert status == 408
        assert 1 <= elapsed < 2
        assert await no_temp_files(storage) == []


async def test_ingest_refuses_uploads_beyond_the_cap_when_stalled_ones_hold_it(
    start_gateway: Callable[..., Any],
    storage: Storage,
) -> None:
    before = cut("busy")
    async with start_gateway(max_concurrent_uploads=3, upload_idle_timeout_seconds=1) as gw:
        slots = gw.client.app[UPLOAD_SLOTS]
        holders = [await start_upload(gw.client, seed) for seed in range(3)]
        for _ in range(100):
            if slots.active == 3:
                break
            await asyncio.sleep(0.02)
        assert slots.active == 3
        # Beyond the cap: 503 at once, however the client behaves.
        for seed in range(3, 6):
            reader, writer = await start_upload(gw.client, seed)
            status, headers = await answer(reader, timeout=0.5)
            assert status == 503 and int(headers["retry-after"]) > 0
            writer.close()
        refused = await gw.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(10))))
        assert refused.status == 503
        assert (await refused.json())["details"] == {"limit": 3}
        assert cut("busy") == before + 4
        # The stalled ones are cut; then uploads go through again.
        for reader, writer in holders:
            assert (await answer(reader))[0] == 408
            writer.close()
        ok = await gw.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(10))))
        assert ok.status == 202, await ok.text()
        assert slots.active == 0
        assert await no_temp_files(storage) == []


class ServedGateway(GatewayServer):
    """As server.py serves it: a handler is not cancelled when its client goes away (its
    reads fail instead); aiohttp's test server cancels it."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return await super()._make_runner(**(kwargs | {"handler_cancellation": False}))


@pytest.mark.parametrize("cancelled", [False, True], ids=["as served", "handler cancelled"])
async def test_ingest_logs_a_client_abort_when_the_client_disconnects_mid_upload(
    settings_factory: Callable[..., Any],
    storage: Storage,
    db: asyncpg.Connection,
    cancelled: bool,
) -> None:
    app = build_app(settings_factory())
    client = TestClient(GatewayServer(app) if cancelled else ServedGateway(app))
    await client.start_server()
    before = cut("client_abort")
    try:
        with capture_logs() as logs:
            _, writer = await start_upload(client)
            for _ in range(100):
                if app[UPLOAD_SLOTS].active:  # the upload is under way
                    break
                await asyncio.sleep(0.02)
            writer.transport.abort()  # gone, as a client killed mid-upload is
            assert await no_temp_files(storage) == []
            for _ in range(100):
                if cut("client_abort") > before:
                    break
                await asyncio.sleep(0.02)
    finally:
        await client.close()
    assert cut("client_abort") == before + 1
    aborted = [e for e in logs if e["event"] == "upload aborted by the client"]
    assert len(aborted) == 1 and aborted[0]["log_level"] == "info"
    assert aborted[0]["received_bytes"] > 0
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert not [e for e in logs if "storage" in str(e["event"])]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_gateway_closes_the_connection_when_request_headers_stall(
    start_gateway: Callable[..., Any],
) -> None:
    async with start_gateway(http_keepalive_timeout_seconds=0.5) as gateway:
        reader, writer = await asyncio.open_connection(gateway.client.host, gateway.client.port)
        writer.write(b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\n")  # never finished
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        assert time.monotonic() - started < 2
        writer.close()
