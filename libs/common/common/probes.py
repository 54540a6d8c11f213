"""The small HTTP server every worker runs: /live, /ready and /metrics for probes and scraping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp import web

from common.bus import Bus
from common.health import STATUS_CODE, Status
from common.http import AppRunner, harden
from common.metrics import metrics_response
from common.settings import OpenBindRefused, check_bind

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
Info = Callable[[], dict[str, Any]]


def probe_app(ready: ReadyCheck, info: Info, bus: Bus | None = None) -> web.Application:
    """/live, /ready (every check true), /health (what the worker runs) and /metrics."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readiness(_: web.Request) -> web.Response:
        checks = await ready()
        ok = all(checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
        )

    async def health(_: web.Request) -> web.Response:
        checks = await ready()
        refused = bus.refusal_report() if bus is not None else {}
        status: Status = "healthy"
        if not checks.get("database", True):
            status = "unhealthy"
        elif not all(checks.values()) or refused:
            status = "degraded"
        body = {"status": status, "checks": checks, "refused_publishes": refused, **info()}
        return web.json_response(body, status=STATUS_CODE[status])

    async def metrics(_: web.Request) -> web.Response:
        return metrics_response(bus.settings.metrics_enabled if bus is not None else True)

    app = harden(web.Application())
    app.router.add_get("/live", live)
    app.router.add_get("/ready", readiness)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


async def worker_checks(
    pool: asyncpg.Pool, bus: Bus, consuming: asyncio.Task[None]
) -> dict[str, bool]:
    """What every worker's readiness needs: the database answers, the bus is connected, and
    its consumers started (the task that starts them finished without an error)."""
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), 2)
        database = True
    except Exception:
        database = False
    started = consuming.done() and not consuming.cancelled() and not consuming.exception()
    return {"database": database, "bus": bus.connected, "consuming": started}


@asynccontextmanager
async def serve_probes(
    ready: ReadyCheck, info: Info, host: str, port: int, bus: Bus | None = None
) -> AsyncIterator[int]:
    """Serve the probe app while the block runs; yields the bound port (0 picks one)."""
    runner = AppRunner(probe_app(ready, info, bus), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    sockets = getattr(site._server, "sockets", None)
    if sockets:
        bound = sockets[0].getsockname()[1]
    try:
        yield bound
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_worker(
    service: str,
    consume: Coroutine[Any, Any, None],
    pool: asyncpg.Pool,
    bus: Bus,
    info: Info,
    host: str,
    port: int,
    extra_checks: Callable[[], Awaitable[dict[str, bool]]] | None = None,
) -> AsyncIterator[int]:
    """Start a worker's consumers and serve its probes while the block runs; the bound port.

    With the broker up, the consumers exist before the block starts; without it they start
    when it comes (the probes say not ready meanwhile). A start that fails is an error here.
    An open deployment (no API key) refuses a probe port beyond loopback (check_bind).
    """
    try:
        check_bind(bus.settings, host, "WORKER_HTTP_HOST")
    except OpenBindRefused:
        consume.close()  # never started
        raise
    started: asyncio.Task[None] = asyncio.create_task(consume)
    await asyncio.wait({started}, timeout=10)
    if started.done() and not started.cancelled() and started.exception() is not None:
        raise RuntimeError(f"the {service} could not start consuming") from started.exception()

    async def ready() -> dict[str, bool]:
        checks = await worker_checks(pool, bus, started)
        return {**checks, **(await extra_checks() if extra_checks else {})}

    try:
        async with serve_probes(ready, info, host, port, bus) as bound:
            yield bound
    finally:
        started.cancel()
        await asyncio.gather(started, return_exceptions=True)
