"""The small HTTP server every worker runs: /live, /ready and /metrics for probes and scraping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


def probe_app(ready: ReadyCheck) -> web.Application:
    """/live (process up), /ready (every check true) and /metrics (Prometheus text)."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readiness(_: web.Request) -> web.Response:
        checks = await ready()
        ok = all(checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
        )

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    app = web.Application()
    app.router.add_get("/live", live)
    app.router.add_get("/ready", readiness)
    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def serve_probes(ready: ReadyCheck, host: str, port: int) -> AsyncIterator[int]:
    """Serve the probe app while the block runs; yields the bound port (0 picks one)."""
    runner = web.AppRunner(probe_app(ready), access_log=None)
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
