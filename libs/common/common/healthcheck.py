"""A container's health check: exit 0 when its service answers /ready on its own port.

    python -m common.healthcheck [SERVICE]

SERVICE defaults to MAMMOTHBOX_SERVICE (the images set it). The port is the one the service
listens on, read as its settings read it: HTTP_PORT for the gateway, WORKER_HTTP_PORT for a
worker, else the settings' default. Exit 1 (and one line) when it is not ready or not there.
"""

from __future__ import annotations

import importlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

SERVICES = ("gateway", "embedder", "clusterer", "analyzer", "schemer")
TIMEOUT_S = 4.0


def settings_class(service: str) -> Any:
    """The service's settings class (gateway: gateway.settings.GatewaySettings, ...)."""
    module = importlib.import_module(f"{service}.settings")
    return getattr(module, f"{service.capitalize()}Settings")


def probe_port(service: str, env: Mapping[str, str] = os.environ) -> int:
    """The port `service` listens on with these variables (default: this environment)."""
    field = "http_port" if service == "gateway" else "worker_http_port"
    raw = env.get(field.upper()) or env.get(field)
    return int(raw) if raw else int(settings_class(service).model_fields[field].default)


def main(argv: list[str]) -> int:
    service = argv[0] if argv else os.environ.get("MAMMOTHBOX_SERVICE", "")
    if service not in SERVICES:
        print(f"unknown service {service!r}: one of {', '.join(SERVICES)}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{probe_port(service)}/ready"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"{service} not ready at {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
