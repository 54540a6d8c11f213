"""Serving processes: one, or several sharing the port (HTTP_WORKERS)."""

from __future__ import annotations

import multiprocessing
import signal
import sys

import uvloop
from aiohttp import web

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
    web.run_app(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        access_log_class=AccessLogger,
        reuse_port=settings.http_workers > 1,
        print=None,
    )


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
