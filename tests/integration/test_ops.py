"""Probes, health and metrics; health under a broker outage; settings errors at start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import asyncpg

from common.messages import MediaIngested
from tests.conftest import RABBITMQ_URL, make_jpeg
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form
from tests.proxy import TcpProxy


async def test_live_and_ready_answer_ok_when_everything_is_reachable(gateway: Gateway) -> None:
    live = await gateway.client.get("/live")
    assert live.status == 200
    ready = await gateway.client.get("/ready")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"database": True, "bus": True, "storage": True}


async def test_health_shows_every_section_when_healthy(gateway: Gateway) -> None:
    await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(1))))
    await asyncio.sleep(0.3)
    response = await gateway.client.get("/health")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "healthy"
    assert body["database"]["status"] == "ok"
    assert {"pool_size", "in_use", "latency_ms"} <= set(body["database"])
    assert body["storage"]["backend"] == "filesystem"
    assert body["storage"]["writable"] is True
    assert body["storage"]["free_bytes"] > 0
    assert body["queues"][gateway.media_queue]["depth"] == 1
    assert body["queues"][gateway.media_queue]["dlq_depth"] == 0
    assert body["workers"]["embedder"] == {
        "consumers": 0,
        "num_workers": 0,
        "queues": [gateway.media_queue],
    }
    assert body["workers"]["num_workers"] == 0  # all services together: none runs here
    assert body["system"]["memory_rss_mb"] > 0
    assert {"cpu_percent", "uptime_seconds"} <= set(body["system"])
    # Where files live and which process serves are for admin keys only.
    assert "path" not in body["storage"] and "pid" not in body["system"]


ADMIN_KEY = "admin-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"


async def test_health_shows_storage_path_and_pid_only_to_an_admin_key(
    start_gateway: Callable[..., Any],
) -> None:
    async with start_gateway(api_keys=f"{READ_KEY}:read", admin_api_key=ADMIN_KEY) as gateway:
        anonymous = await (await gateway.client.get("/health")).json()
        reader = await (await gateway.client.get("/health", headers={"X-API-Key": READ_KEY})).json()
        admin = await (
            await gateway.client.get("/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        ).json()
    for body in (anonymous, reader):
        assert "path" not in body["storage"] and "pid" not in body["system"]
    assert admin["storage"]["path"] == gateway.deps.storage.describe()["path"]
    assert admin["system"]["pid"] == os.getpid()


async def test_health_counts_disk_headroom_when_free_space_runs_low(
    start_gateway: Callable[..., Any],
) -> None:
    async with start_gateway() as probe:
        free = (await probe.deps.storage.capacity()).free
        assert free is not None
    # Less than twice the reserve left: degraded; less than the reserve: unhealthy.
    async with start_gateway(min_free_disk_bytes=int(free * 0.75)) as gateway:
        response = await gateway.client.get("/health")
        body = await response.json()
        assert response.status == 429 and body["storage"]["status"] == "low", body
    async with start_gateway(min_free_disk_bytes=free * 4) as gateway:
        response = await gateway.client.get("/health")
        body = await response.json()
        assert response.status == 503 and body["storage"]["status"] == "full", body
        refused = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(9))))
        assert refused.status == 503 and "Retry-After" in refused.headers


async def test_health_is_degraded_and_ingest_refused_when_outbox_events_lag(
    start_gateway: Callable[..., Any], db: asyncpg.Connection
) -> None:
    async with start_gateway(outbox_relay_enabled=False) as gateway:
        await db.execute(
            """INSERT INTO outbox (message_id, routing_key, body, created_at)
               VALUES (gen_random_uuid(), $1, '{}', now() - interval '130 seconds')""",
            MediaIngested.routing_key,
        )
        await gateway.deps.backpressure.refresh()
        response = await gateway.client.get("/health")
        body = await response.json()
        assert response.status == 429 and body["status"] == "degraded", body
        lag = body["outbox"]["destinations"][MediaIngested.routing_key]
        assert lag["lagging"] is True and lag["lag_seconds"] >= 130
        refused = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(8))))
        assert refused.status == 503 and "Retry-After" in refused.headers
        assert "image uploads" in (await refused.json())["error"]
        # JSON writes other events, which do not lag: it is still taken.
        assert (await gateway.client.post("/api/v1/ingest", json={"a": 1})).status == 202


async def test_metrics_exposes_ingest_latency_outbox_lag_and_queue_depth(
    gateway: Gateway,
) -> None:
    await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(2))))
    await gateway.deps.backpressure.refresh()
    response = await gateway.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    for name in (
        "ingest_latency_seconds_bucket",
        "outbox_lag_seconds",
        "outbox_pending",
        "queue_depth{",
        "dlq_depth{",
        "db_query_duration_seconds",
        'oldest_unfinished_seconds{stage="ingested"}',
    ):
        assert name in text, name


async def test_health_turns_degraded_when_broker_is_unreachable_then_recovers(
    start_gateway: Callable[..., Any],
) -> None:
    host_port = RABBITMQ_URL.rsplit("@", 1)[1].split("/")[0]
    host, port = host_port.split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    url = RABBITMQ_URL.replace(host_port, f"127.0.0.1:{proxy.port}")
    try:
        async with start_gateway(rabbitmq_url=url) as gateway:
            assert (await (await gateway.client.get("/health")).json())["status"] == "healthy"
            await proxy.cut()
            body: dict[str, Any] = {}
            for _ in range(100):
                response = await gateway.client.get("/health")
                body = await response.json()
                if body["status"] == "degraded":
                    break
                await asyncio.sleep(0.1)
            assert response.status == 429  # degraded: told apart from 200 and 503
            assert body["status"] == "degraded"
            assert "bus down" in body["reasons"]
            assert body["bus"]["status"] == "down"
            assert body["database"]["status"] == "ok"
            assert (await gateway.client.get("/ready")).status == 503
            # Ingest still works: the event waits in the outbox.
            accepted = await gateway.client.post(
                "/api/v1/ingest", data=form(("a.jpg", make_jpeg(3)))
            )
            assert accepted.status == 202
            await proxy.restore()
            for _ in range(200):
                body = await (await gateway.client.get("/health")).json()
                if body["status"] == "healthy" and body["outbox"]["pending"] == 0:
                    break
                await gateway.deps.backpressure.refresh()
                await asyncio.sleep(0.1)
            assert body["status"] == "healthy"
            assert body["outbox"]["pending"] == 0  # the waiting event went out
            assert body["queues"][gateway.media_queue]["depth"] == 1
    finally:
        await proxy.close()


async def test_health_is_unhealthy_when_database_is_unreachable(gateway: Gateway) -> None:
    await gateway.deps.pool.close()
    response = await gateway.client.get("/health")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unhealthy"
    assert body["database"]["status"] == "down"
    assert "system" in body and "storage" in body


def test_gateway_stops_with_one_line_naming_the_setting_when_invalid() -> None:
    env = {**os.environ, "DB_POOL_SIZE": "many", "RABBITMQ_URL": "http://nope"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DB_POOL_SIZE" in lines[0] and "RABBITMQ_URL" in lines[0]


async def test_metrics_enabled_false_turns_off_the_metrics_of_the_gateway_and_of_a_worker(
    start_gateway: Callable[..., Any], common_settings: dict[str, Any]
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from common.bus import Bus
    from common.probes import probe_app
    from common.settings import WorkerSettings

    async with start_gateway(metrics_enabled=False) as gateway:
        response = await gateway.client.get("/metrics")
        assert response.status == 404
        assert (await response.json())["error"].startswith("metrics are disabled")
        assert (await gateway.client.get("/health")).status == 200  # the rest answers

    async def ready() -> dict[str, bool]:
        return {"database": True}

    for enabled, status in ((False, 404), (True, 200)):
        bus = Bus(WorkerSettings(**common_settings, metrics_enabled=enabled))
        client = TestClient(TestServer(probe_app(ready, dict, bus)))
        await client.start_server()
        try:
            response = await client.get("/metrics")
            assert response.status == status
            if enabled:
                assert "jobs_processed_total" in await response.text()
        finally:
            await client.close()
