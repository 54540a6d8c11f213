"""Probes and telemetry endpoints: /live, /ready, /health, /metrics."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg
import psutil
import structlog
from aiohttp import web
from prometheus_client import Gauge

from common.health import STATUS_CODE, Status
from common.metrics import metrics_response
from gateway.auth import KEYS, presents_admin_key
from gateway.deps import DEPS, Deps
from gateway.repo.ops import ping, waiting_dead_letters
from gateway.switching import describe

log = structlog.get_logger(__name__)
QUEUE_DEPTH = Gauge("queue_depth", "Messages waiting, by queue.", ["queue"])
DLQ_DEPTH = Gauge("dlq_depth", "Messages parked in dead-letter queues, by origin queue.", ["queue"])
_PROCESS = psutil.Process(os.getpid())
_PROBE_TIMEOUT = 2.0
# A queue this full (of its length limit) is reported before it starts refusing publishes.
QUEUE_NEARLY_FULL = 0.9


async def handle_live(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _database(deps: Deps, admin: bool = False) -> dict[str, Any]:
    pool = deps.pool
    start = time.perf_counter()
    try:
        await asyncio.wait_for(ping(pool), _PROBE_TIMEOUT)
        status = "ok"
    except Exception as error:
        text = str(error) or type(error).__name__
        log.warning("health: database unreachable", error=text)
        # The driver's words go to the log, and to admin keys; not to anyone who asks.
        return {"status": "down", **({"error": text} if admin else {})}
    return {
        "status": status,
        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        "pool_size": pool.get_size(),
        "pool_min": pool.get_min_size(),
        "pool_max": pool.get_max_size(),
        "in_use": pool.get_size() - pool.get_idle_size(),
    }


async def _models(deps: Deps) -> dict[str, Any]:
    """The active model and a model switch's progress (gateway/switching.py)."""
    try:
        return await asyncio.wait_for(describe(deps.pool), _PROBE_TIMEOUT)
    except Exception as error:
        log.warning("health: model state unreadable", error=str(error) or type(error).__name__)
        return {}


async def _storage(deps: Deps, admin: bool) -> dict[str, Any]:
    """Reachable and writable (a probe written and removed), and free space where the
    backend has such a thing (a bucket has none: free_bytes is null)."""
    writable = await deps.storage.writable()
    free = (await deps.storage.capacity()).free if writable else None
    minimum = deps.settings.min_free_disk_bytes
    status = "ok" if writable else "down"
    if free is not None and free < minimum:
        status = "full"  # ingest refuses everything
    elif free is not None and free < 2 * minimum:
        status = "low"  # headroom for less than the reserve again
    section = {
        "status": status,
        "backend": deps.storage.backend,
        "writable": writable,
        "free_bytes": free,
        "min_free_bytes": minimum,
    }
    if admin:  # where the store is: a path, or an endpoint, bucket and prefix
        section |= deps.storage.describe()
    return section


async def _queues(deps: Deps) -> tuple[dict[str, Any], dict[str, Any]]:
    """Depth per queue and its dead letters (in the parking queue and recorded, not yet
    requeued or purged); consumers per service, and `num_workers` in all."""
    queues: dict[str, Any] = {}
    workers: dict[str, Any] = {}
    try:
        # The recorder takes parked messages off their broker queue at once: what an admin
        # has to look at is in the table (a parking queue's depth alone would read 0).
        recorded = await waiting_dead_letters(deps.pool)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        recorded = {}
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
        dlq_depth = parked[0] + recorded.get(spec.name, 0) if parked else None
        limit = deps.settings.bus_queue_max_length
        queues[spec.name] = {
            "depth": depth,
            "max_length": limit,
            "full": depth >= limit,
            "nearly_full": depth >= QUEUE_NEARLY_FULL * limit,
            "dlq_depth": dlq_depth,
            "consumers": consumers,
        }
        QUEUE_DEPTH.labels(spec.name).set(depth)
        if dlq_depth is not None:
            DLQ_DEPTH.labels(spec.name).set(dlq_depth)
        entry["consumers"] += consumers
        # Every worker process holds one consumer on each queue of its service.
        entry["num_workers"] = max(entry["num_workers"], consumers)
    # The worker processes of every service together (each service's own is in its entry).
    total = sum(e["num_workers"] for e in workers.values())
    return queues, {"num_workers": total, **workers}


def _system(deps: Deps, admin: bool) -> dict[str, Any]:
    section: dict[str, Any] = {
        "cpu_percent": _PROCESS.cpu_percent(None),
        "memory_rss_mb": round(_PROCESS.memory_info().rss / 2**20, 1),
        "uptime_seconds": round(time.time() - deps.started_at, 1),
    }
    if admin:
        section["pid"] = _PROCESS.pid
    return section


def _outbox(deps: Deps) -> dict[str, Any]:
    """The backlog in all and per destination: which ones lag, and which this relay backs
    off from because the broker refuses their publishes."""
    backpressure = deps.backpressure
    stalls = deps.relay.report() if deps.relay is not None else {}
    destinations: dict[str, Any] = {}
    for name in sorted(backpressure.destinations.keys() | stalls.keys()):
        state = backpressure.destinations.get(name)
        destinations[name] = {
            "pending": state.pending if state else 0,
            "lag_seconds": round(state.lag_seconds, 3) if state else 0.0,
            "lagging": backpressure.lagging(name),
            "refused": stalls.get(name),
        }
    outbox = backpressure.outbox
    return {
        "pending": outbox.pending,
        "lag_seconds": round(outbox.lag_seconds, 3),
        "max_lag_seconds": deps.settings.outbox_max_lag_seconds,
        "destinations": destinations,
    }


def _overall(
    database: dict[str, Any],
    storage: dict[str, Any],
    bus_ok: bool,
    queues: dict[str, Any],
    outbox: dict[str, Any],
) -> tuple[Status, list[str]]:
    """healthy, degraded (serving, but refusing or delaying some work) or unhealthy, and why."""
    if database["status"] != "ok":
        return "unhealthy", ["database down"]
    if storage["status"] in ("down", "full"):
        return "unhealthy", [f"storage {storage['status']}"]
    reasons = [] if bus_ok else ["bus down"]
    if storage["status"] == "low":
        reasons.append("storage low on free space")
    for name, queue in queues.items():
        if queue.get("full"):
            reasons.append(f"queue {name} full")
        elif queue.get("nearly_full"):
            reasons.append(f"queue {name} nearly full")
    for name, destination in outbox["destinations"].items():
        if destination["refused"]:
            reasons.append(f"publishes to {name} refused ({destination['refused']['reason']})")
        if destination["lagging"]:
            reasons.append(f"events to {name} lagging: ingest of that kind refused")
    return ("degraded" if reasons else "healthy"), reasons


async def handle_health(request: web.Request) -> web.Response:
    """Every section DESIGN names; 200 healthy, 429 degraded, 503 unhealthy; never a crash."""
    deps = request.app[DEPS]
    admin = presents_admin_key(request)
    database = await _database(deps, admin)
    storage = await _storage(deps, admin)
    bus_ok = deps.bus.connected
    if bus_ok:
        try:
            queues, workers = await asyncio.wait_for(_queues(deps), _PROBE_TIMEOUT * 2)
        except TimeoutError:
            queues, workers, bus_ok = {}, {}, False
    else:
        queues, workers = {}, {}
    outbox = _outbox(deps)
    models = await _models(deps) if database["status"] == "ok" else {}
    status, reasons = _overall(database, storage, bus_ok, queues, outbox)
    body = {
        "status": status,
        "reasons": reasons,
        "database": database,
        "storage": storage,
        "bus": {"status": "ok" if bus_ok else "down"},
        "queues": queues,
        "workers": workers,
        "outbox": outbox,
        "models": models,
        "system": _system(deps, admin),
        "auth": _auth(request),
    }
    return web.json_response(body, status=STATUS_CODE[status])


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
        "storage": await deps.storage.writable(),
    }
    ready = all(checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


async def handle_metrics(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    if not deps.settings.metrics_enabled:
        return metrics_response(False)
    if deps.bus.connected:
        try:
            await asyncio.wait_for(_queues(deps), _PROBE_TIMEOUT)
        except TimeoutError:
            pass
    return metrics_response(True)
