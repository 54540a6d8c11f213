"""python -m gateway: the HTTP gateway with its outbox relay and dead-letter recorder."""

from __future__ import annotations

from common.settings import load_settings
from gateway.server import run
from gateway.settings import GatewaySettings


def main() -> None:
    run(load_settings(GatewaySettings, listen="http_host"))


if __name__ == "__main__":
    main()
