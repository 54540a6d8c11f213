"""Serving processes: one, or several sharing the port (HTTP_WORKERS)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import sys

import uvloop
from aiohttp import web

from common.http import AppRunner
from common.log import configure_logging
from common.telemetry import configure_telemetry
from gateway.app import build_app
from gateway.errors import AccessLogger
from gateway.settings import GatewaySettings


def serve(settings: GatewaySettings) -> None:
    """One serving process: its own pool, bus connection, relay and recorder."""
    configure_logging(settings, "gateway")
    configure_telemetry("gateway")
    uvloop.install()
    # SIGTERM/SIGINT raise GracefulExit (handle_signals); the runner's cleanup then drains
    # connections and closes resources, as web.run_app does, and the process exits 0.
    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(_serve(settings))


async def _serve(settings: GatewaySettings) -> None:
    # web.run_app cannot take a runner; ours answers malformed requests as JSON errors.
    runner = AppRunner(
        build_app(settings),
        handle_signals=True,
        access_log_class=AccessLogger,
        keepalive_timeout=75.0,  # web.run_app's
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.http_host,
            settings.http_port,
            reuse_port=settings.http_workers > 1,
        )
        await site.start()
        await asyncio.Event().wait()  # until a signal stops the loop
    finally:
        await runner.cleanup()


def run(settings: GatewaySettings) -> None:
    """Serve in this process, or in HTTP_WORKERS processes that share the port."""
    if settings.http_workers == 1:
        serve(settings)
        return
    # The kernel spreads connections across processes bound with SO_REUSEPORT.
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=serve, args=(settings,), name=f"gateway-{i}")
        for i in range(settings.http_workers)
    ]
    for worker in workers:
        worker.start()

    def stop(signum: int, _: object) -> None:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    sys.exit(max(abs(w.exitcode or 0) for w in workers))
