"""common.healthcheck, the images' HEALTHCHECK: the service's /ready on the port its settings
read, exit 0 only on 200."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from common import healthcheck


class Ready(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/ready" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    Ready.status = 200


def test_ports_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PORT", "WORKER_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert [healthcheck.probe_port(s) for s in healthcheck.SERVICES] == [
        8000,
        8081,
        8082,
        8083,
        8084,
    ]
    monkeypatch.setenv("WORKER_HTTP_PORT", "9100")
    assert healthcheck.probe_port("schemer") == 9100
    assert healthcheck.probe_port("gateway") == 8000


def test_ready_is_healthy_and_anything_else_is_not(
    server: http.server.HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_HTTP_PORT", str(server.server_address[1]))
    monkeypatch.setenv("MAMMOTHBOX_SERVICE", "clusterer")
    assert healthcheck.main([]) == 0
    Ready.status = 503
    assert healthcheck.main([]) == 1
    monkeypatch.setenv("WORKER_HTTP_PORT", "1")  # nothing listens there
    assert healthcheck.main(["embedder"]) == 1


def test_unknown_service(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["web"]) == 2
    assert "unknown service 'web'" in capsys.readouterr().err
