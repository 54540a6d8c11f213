"""What every HTTP server answers alike (the gateway, the workers' probes): plain headers,
JSON errors even for requests aiohttp refuses before any handler, stored bytes served so
that a browser never runs them, and no open listening on the network by accident."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import structlog

from clusterer.app import running as clusterer_running
from clusterer.settings import ClustererSettings
from common.probes import serve_probes
from common.settings import OpenBindRefused
from tests.clusterer.conftest import clusterer_settings  # noqa: F401
from tests.conftest import BusNames, make_jpeg, service_env
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form
from tests.ports import free_port

MALFORMED: dict[str, bytes] = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "not HTTP at all (TLS)": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
    "bad header": b"GET /live HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
    "header too large": b"GET /live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
    "invalid chunked encoding": (
        b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n"
    ),
}


async def raw_exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; the status, headers (lower-case names) and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # an error closes the connection
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_json_400(status: int, headers: dict[str, str], body: bytes, what: str) -> None:
    assert status == 400, what
    assert headers["content-type"].startswith("application/json"), (what, headers)
    assert headers["server"] == "mammothbox" and headers["x-content-type-options"] == "nosniff"
    answer = orjson.loads(body)
    assert answer["error"].startswith("malformed HTTP request"), (what, answer)
    assert answer["request_id"] == headers["x-request-id"], what


async def assert_answered_as_json_with_one_warning(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    for what, data in MALFORMED.items():
        caplog.clear()
        with structlog.testing.capture_logs() as logs:
            status, headers, body = await raw_exchange(port, data)
        assert_json_400(status, headers, body, what)
        # One warning line, no traceback, nothing at error level (aiohttp's own included).
        assert [(e["event"], e["log_level"]) for e in logs] == [
            ("malformed http request", "warning")
        ], (what, logs)
        assert "exc_info" not in logs[0] and logs[0]["status"] == 400
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], what


async def test_gateway_answers_malformed_requests_with_json_400_and_one_warning(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    port = gateway.client.server.port
    assert port is not None
    await assert_answered_as_json_with_one_warning(port, caplog)
    # The connection it broke aside, the gateway serves on.
    assert (await gateway.client.get("/live")).status == 200


async def test_probe_server_answers_malformed_requests_with_json_400_and_plain_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def ready() -> dict[str, bool]:
        return {"database": True}

    async with serve_probes(ready, lambda: {"service": "test"}, "127.0.0.1", 0) as port:
        await assert_answered_as_json_with_one_warning(port, caplog)
        async with aiohttp.ClientSession() as session:
            for path in ("/live", "/ready", "/health", "/metrics", "/nope"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.headers["Server"] == "mammothbox", path
                    assert response.headers["X-Content-Type-Options"] == "nosniff", path


async def test_gateway_names_no_versions_and_forbids_sniffing_on_every_answer(
    gateway: Gateway,
) -> None:
    requests = [
        ("GET", "/live"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/nope"),  # 404
        ("DELETE", "/api/v1/ingest"),  # 405
        ("GET", "/api/v1/objects/not-a-uuid"),  # 400
        ("POST", "/api/v1/ingest"),  # 400: no body
    ]
    for method, path in requests:
        response = await gateway.client.request(method, path)
        assert response.headers["Server"] == "mammothbox", (method, path)
        assert response.headers["X-Content-Type-Options"] == "nosniff", (method, path)


async def test_object_content_is_a_download_unless_its_type_is_a_passive_image_or_video(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    image = make_jpeg(11)
    response = await gateway.client.post("/api/v1/ingest", data=form(("cat.jpg", image)))
    [system_id] = (await response.json())["system_ids"]
    url = f"/api/v1/objects/{system_id}/content"
    shown = await gateway.client.get(url)
    assert shown.headers["Content-Type"] == "image/jpeg"
    assert shown.headers["Content-Disposition"].startswith("inline;")
    assert shown.headers["X-Content-Type-Options"] == "nosniff"
    # Types a browser would run or render actively (or that the list does not know) are
    # downloads, never shown as a page of the gateway's origin.
    for mime in ("image/svg+xml", "text/html", "application/xml", "application/x-unknown"):
        await db.execute("UPDATE content SET mime_type = $1", mime)
        served = await gateway.client.get(url)
        assert served.status == 200 and await served.read() == image
        assert served.headers["Content-Type"] == "application/octet-stream", mime
        assert served.headers["Content-Disposition"].startswith("attachment;"), mime
        assert served.headers["X-Content-Type-Options"] == "nosniff"
    await db.execute("UPDATE uploads SET filename = NULL")
    assert (await gateway.client.get(url)).headers["Content-Disposition"] == "attachment"


async def test_worker_refuses_a_network_probe_address_when_the_deployment_is_open(
    clusterer_settings: Callable[..., ClustererSettings],  # noqa: F811
) -> None:
    with pytest.raises(OpenBindRefused, match=r"WORKER_HTTP_HOST=0\.0\.0\.0"):
        async with clusterer_running(clusterer_settings(worker_http_host="0.0.0.0")):
            pytest.fail("started")


def test_services_stop_with_one_line_when_open_and_listening_beyond_loopback() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("API_KEYS", "ADMIN_API_KEY", "ALLOW_OPEN")
    }
    for service, variable in (("gateway", "HTTP_HOST"), ("clusterer", "WORKER_HTTP_HOST")):
        result = subprocess.run(
            [sys.executable, "-m", service],
            env={**env, variable: "0.0.0.0"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (service, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (service, lines)
        assert f"{variable}=0.0.0.0" in lines[0] and "ALLOW_OPEN=true" in lines[0]


async def test_gateway_process_serves_json_errors_and_stops_cleanly_when_terminated(
    database_url: str, bus_names: BusNames, storage_path: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(
        database_url, bus_names, storage_path, HTTP_PORT=str(port), MIN_FREE_DISK_BYTES="0"
    )
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], env=env, stdout=log, stderr=log
        )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/ready") as ready:
                        if ready.status == 200:
                            assert ready.headers["Server"] == "mammothbox"
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.poll() is None, log_path.read_text()
                await asyncio.sleep(0.1)
        for what, data in MALFORMED.items():
            assert_json_400(*await raw_exchange(port, data), what)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines: list[dict[str, Any]] = [
        orjson.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    assert len([e for e in lines if e["event"] == "malformed http request"]) == len(MALFORMED)
    assert not [e for e in lines if e["level"] in ("error", "critical")], lines
    assert "Traceback" not in log_path.read_text()
