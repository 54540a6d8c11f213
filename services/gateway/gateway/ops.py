"""Probes and telemetry endpoints: /live, /ready, /health, /metrics."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psutil
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from gateway.auth import KEYS
from gateway.deps import DEPS, Deps

QUEUE_DEPTH = Gauge("queue_depth", "Messages waiting, by queue.", ["queue"])
DLQ_DEPTH = Gauge("dlq_depth", "Messages parked in dead-letter queues, by origin queue.", ["queue"])
_PROCESS = psutil.Process(os.getpid())
_PROBE_TIMEOUT = 2.0


async def handle_live(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _database(deps: Deps) -> dict[str, Any]:
    pool = deps.pool
    start = time.perf_counter()
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), _PROBE_TIMEOUT)
        status = "ok"
    except Exception as error:
        return {"status": "down", "error": str(error) or type(error).__name__}
    return {
        "status": status,
        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        "pool_size": pool.get_size(),
        "pool_min": pool.get_min_size(),
        "pool_max": pool.get_max_size(),
        "in_use": pool.get_size() - pool.get_idle_size(),
    }


def _storage(deps: Deps) -> dict[str, Any]:
    writable = deps.storage.writable()
    return {
        "status": "ok" if writable else "down",
        "backend": deps.storage.backend,
        "path": str(deps.storage.root),
        "writable": writable,
        "free_bytes": deps.storage.free_bytes(),
    }


async def _queues(deps: Deps) -> tuple[dict[str, Any], dict[str, Any]]:
    """Depth per queue and its dead-letter queue; consumers per service."""
    queues: dict[str, Any] = {}
    workers: dict[str, Any] = {}
    for spec in deps.bus.specs:
        main, parked = await asyncio.gather(
            deps.bus.queue_stats(spec.name), deps.bus.queue_stats(spec.parking)
        )
        entry = workers.setdefault(spec.service, {"consumers": 0, "num_workers": 0, "queues": []})
        entry["queues"].append(spec.name)
        if main is None:
            queues[spec.name] = {"status": "unknown"}
            continue
        depth, consumers = main
        dlq_depth = parked[0] if parked else None
        queues[spec.name] = {"depth": depth, "dlq_depth": dlq_depth, "consumers": consumers}
        QUEUE_DEPTH.labels(spec.name).set(depth)
        if dlq_depth is not None:
            DLQ_DEPTH.labels(spec.name).set(dlq_depth)
        entry["consumers"] += consumers
        # Every worker process holds one consumer on each queue of its service.
        entry["num_workers"] = max(entry["num_workers"], consumers)
    return queues, workers


def _system(deps: Deps) -> dict[str, Any]:
    return {
        "cpu_percent": _PROCESS.cpu_percent(None),
        "memory_rss_mb": round(_PROCESS.memory_info().rss / 2**20, 1),
        "uptime_seconds": round(time.time() - deps.started_at, 1),
        "pid": _PROCESS.pid,
    }


async def handle_health(request: web.Request) -> web.Response:
    """Every section DESIGN names; degraded (200) or unhealthy (503), never a crash."""
    deps = request.app[DEPS]
    database = await _database(deps)
    storage = await asyncio.to_thread(_storage, deps)
    bus_ok = deps.bus.connected
    if bus_ok:
        try:
            queues, workers = await asyncio.wait_for(_queues(deps), _PROBE_TIMEOUT * 2)
        except TimeoutError:
            queues, workers, bus_ok = {}, {}, False
    else:
        queues, workers = {}, {}
    if database["status"] != "ok" or storage["status"] != "ok":
        status = "unhealthy"
    elif not bus_ok:
        status = "degraded"
    else:
        status = "healthy"
    outbox = deps.backpressure.outbox
    body = {
        "status": status,
        "database": database,
        "storage": storage,
        "bus": {"status": "ok" if bus_ok else "down"},
        "queues": queues,
        "workers": workers,
        "outbox": {"pending": outbox.pending, "lag_seconds": round(outbox.lag_seconds, 3)},
        "system": _system(deps),
        "auth": _auth(request),
    }
    return web.json_response(body, status=503 if status == "unhealthy" else 200)


def _auth(request: web.Request) -> dict[str, str]:
    if request.app[KEYS].open:
        return {
            "mode": "open",
            "warning": "no API keys configured: anyone who reaches this port may read,"
            " write and administer everything",
        }
    return {"mode": "api-keys"}


async def handle_ready(request: web.Request) -> web.Response:
    """Ready when the database, the bus and storage are all reachable."""
    deps = request.app[DEPS]
    checks = {
        "database": (await _database(deps))["status"] == "ok",
        "bus": deps.bus.connected,
        "storage": await asyncio.to_thread(deps.storage.writable),
    }
    ready = all(checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


async def handle_metrics(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    if deps.bus.connected:
        try:
            await asyncio.wait_for(_queues(deps), _PROBE_TIMEOUT)
        except TimeoutError:
            pass
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response
