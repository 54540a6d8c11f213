"""While the database or the broker is down, every endpoint that needs it answers 503 with
Retry-After, naming what is down and nothing of the driver's error; and works again after."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
from aiohttp import FormData

from common.vectors import register_model
from tests.conftest import RABBITMQ_URL, make_jpeg
from tests.integration.test_ingest import form
from tests.proxy import TcpProxy

RETRY_AFTER = 7  # not the default, so the header is seen to come from the setting
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


class StartingPostgres:
    """A server that answers every connection as a PostgreSQL that is starting up (57P03)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                await reader.readexactly(length - 8)
                if code not in (SSL_REQUEST, GSSENC_REQUEST):
                    break
                writer.write(b"N")  # no encryption; the startup message comes next
            fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def through(url: str, port: int) -> str:
    """The URL with its host and port replaced by the local proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def image_search() -> FormData:
    data = FormData()
    data.add_field("image", make_jpeg(2), filename="q.jpg", content_type="image/jpeg")
    return data


def json_request(value: Any) -> dict[str, Any]:
    return {"data": orjson.dumps(value), "headers": {"Content-Type": "application/json"}}


# Every endpoint that reads or writes the database, with a request it would otherwise answer.
DATABASE_REQUESTS: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
    ("GET", "/api/v1/clusters", dict),
    ("GET", "/api/v1/clusters/{id}", dict),
    ("GET", "/api/v1/ingest/{id}/status", dict),
    ("GET", "/api/v1/objects/{id}", dict),
    ("GET", "/api/v1/objects/{id}/content", dict),
    ("GET", "/api/v1/objects/{id}/thumbnail", dict),
    ("GET", "/api/v1/search?like={id}", dict),
    ("POST", "/api/v1/search", lambda: json_request({"like": str(uuid.uuid4())})),
    ("GET", "/api/v1/admin/dlq", dict),
    ("GET", "/api/v1/admin/dlq/{id}", dict),
    ("POST", "/api/v1/admin/dlq/requeue", lambda: json_request({"all": True})),
    ("POST", "/api/v1/admin/dlq/{id}/requeue", dict),
    ("DELETE", "/api/v1/admin/dlq", dict),
    ("DELETE", "/api/v1/admin/dlq/{id}", dict),
    ("POST", "/api/v1/ingest", lambda: {"data": form(("a.jpg", make_jpeg(3)))}),
    ("POST", "/api/v1/ingest", lambda: json_request({"a": 1})),
    (
        "POST",
        "/api/v1/ingest",
        lambda: {"data": form(("b.jpg", make_jpeg(4)), idempotency_key="k-1")},
    ),
]


@pytest.mark.parametrize("outage", ["refusing connections", "starting up"])
async def test_every_endpoint_answers_503_with_retry_after_when_the_database_is_down(
    start_gateway: Callable[..., Any], database_url: str, outage: str
) -> None:
    target = urlsplit(database_url)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy(target.hostname, target.port)
    await proxy.start()
    starting = StartingPostgres(proxy.port)
    try:
        async with start_gateway(
            database_url=through(database_url, proxy.port), retry_after_seconds=RETRY_AFTER
        ) as gateway:
            assert (await gateway.client.get("/api/v1/clusters")).status == 200
            await proxy.cut()  # drops the pool's connections; new ones are refused
            if outage == "starting up":
                await starting.start()
            for method, path, request_kwargs in DATABASE_REQUESTS:
                response = await gateway.client.request(
                    method, path.format(id=uuid.uuid4()), **request_kwargs()
                )
                assert response.status == 503, (method, path, await response.text())
                assert response.headers["Retry-After"] == str(RETRY_AFTER)
                assert await response.json() == {
                    "error": "database unavailable",
                    "request_id": response.headers["X-Request-ID"],
                }, (method, path)
            await starting.close()
            await proxy.restore()
            # The pool connects again by itself.
            response = await gateway.client.get("/api/v1/clusters")
            assert response.status == 200, await response.text()
            accepted = await gateway.client.post(
                "/api/v1/ingest", data=form(("c.jpg", make_jpeg(5)))
            )
            assert accepted.status == 202
    finally:
        await starting.close()
        await proxy.close()


async def test_endpoints_that_need_the_broker_answer_503_with_retry_after_when_it_is_down(
    start_gateway: Callable[..., Any], db: asyncpg.Connection
) -> None:
    await register_model(db, "test/model-4", 4)  # search gets as far as embedding the query
    target = urlsplit(RABBITMQ_URL)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy(target.hostname, target.port)
    await proxy.start()
    try:
        async with start_gateway(
            rabbitmq_url=through(RABBITMQ_URL, proxy.port), retry_after_seconds=RETRY_AFTER
        ) as gateway:
            await proxy.cut()
            for _ in range(100):
                if not gateway.deps.bus.connected:
                    break
                await asyncio.sleep(0.1)
            assert not gateway.deps.bus.connected
            for method, path, request_kwargs in (
                (
                    "PATCH",
                    f"/api/v1/clusters/{uuid.uuid4()}",
                    lambda: json_request({"action": "confirm"}),
                ),
                ("GET", "/api/v1/search?query=cats", dict),
                ("POST", "/api/v1/search", lambda: json_request({"query": "cats"})),
                ("POST", "/api/v1/search", lambda: {"data": image_search()}),
                ("POST", "/api/v1/admin/model-switch/flip", dict),
            ):
                response = await gateway.client.request(method, path, **request_kwargs())
                assert response.status == 503, (method, path, await response.text())
                assert response.headers["Retry-After"] == str(RETRY_AFTER)
                assert await response.json() == {
                    "error": "the message bus is unavailable",
                    "request_id": response.headers["X-Request-ID"],
                }, (method, path)
            # Reads from the database do not need the broker.
            assert (await gateway.client.get("/api/v1/clusters")).status == 200
    finally:
        await proxy.close()
