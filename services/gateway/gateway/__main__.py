"""python -m gateway: the HTTP gateway with its outbox relay and dead-letter recorder."""

from __future__ import annotations

import uvloop
from aiohttp import web

from common.log import configure_logging
from common.settings import load_settings
from common.telemetry import configure_telemetry
from gateway.app import build_app
from gateway.errors import AccessLogger
from gateway.settings import GatewaySettings


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging(settings, "gateway")
    configure_telemetry("gateway")
    uvloop.install()
    web.run_app(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        access_log_class=AccessLogger,
        print=None,
    )


if __name__ == "__main__":
    main()
