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

SERVICES = ("gateway", "embedder", "clusterer", "analyzer", "schemer")
TIMEOUT_S = 4.0


def probe_port(service: str) -> int:
    """The port `service` listens on in this environment."""
    settings = getattr(
        importlib.import_module(f"{service}.settings"), f"{service.capitalize()}Settings"
    )
    field = "http_port" if service == "gateway" else "worker_http_port"
    raw = os.environ.get(field.upper()) or os.environ.get(field)
    return int(raw) if raw else int(settings.model_fields[field].default)


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
