"""Broken, hostile and oversized input: a clear error and nothing half-written."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aiohttp import FormData
from PIL import Image, TiffImagePlugin

from common.storage import Storage
from tests.conftest import make_jpeg, read_queue
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form, stored_objects

LIMITS = {
    "max_image_bytes": 20_000,
    "max_json_bytes": 4_000,
    "max_json_items": 5,
    "max_files_per_request": 3,
    "max_field_bytes": 300,
}
BIG_JPEG = make_jpeg(1, size=(200, 200))  # well over 20 kB of noise
assert len(BIG_JPEG) > LIMITS["max_image_bytes"]
DEEP = b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}"  # within MAX_JSON_BYTES, over MAX_JSON_DEPTH


def multipart(parts: list[tuple[str, bytes, str | None]]) -> FormData:
    data = FormData()
    for name, value, filename in parts:
        data.add_field(name, value, filename=filename, content_type="application/octet-stream")
    return data


def raw(body: bytes, boundary: str = "XyZ") -> tuple[bytes, dict[str, str]]:
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def json_body(data: bytes) -> dict[str, Any]:
    return {"data": data, "headers": {"Content-Type": "application/json"}}


def dng_bytes() -> bytes:
    """A TIFF whose first directory carries DNGVersion, as every DNG's does."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[50706], ifd.tagtype[50706] = b"\x01\x04\x00\x00", 1
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(out, format="TIFF", tiffinfo=ifd)
    return out.getvalue()


CASES: list[tuple[str, Callable[[], dict[str, Any]], int, str]] = [
    ("no body", lambda: {}, 400, "nothing to ingest"),
    ("empty multipart", lambda: {"data": b"--XyZ--\r\n", "headers": raw(b"")[1]}, 400, "nothing"),
    (
        "empty JSON body",
        lambda: {"data": b"  ", "headers": {"Content-Type": "application/json"}},
        400,
        "empty",
    ),
    (
        "invalid JSON body",
        lambda: {"data": b'{"a": 1,\n "b": }', "headers": {"Content-Type": "application/json"}},
        400,
        "line 2 column",
    ),
    ("JSON scalar", lambda: {"json": 42}, 400, "must be a JSON object"),
    ("JSON array of scalars", lambda: {"json": [1, 2]}, 400, "[0] must be a JSON object"),
    ("empty JSON array", lambda: {"json": []}, 400, "empty JSON array"),
    ("JSON array too long", lambda: {"json": [{"i": i} for i in range(6)]}, 413, "limit"),
    ("JSON body too large", lambda: {"json": {"x": "y" * 5000}}, 413, "larger than"),
    (
        "deeply nested JSON",
        lambda: {
            "data": b"[" * 9000 + b"]" * 9000,
            "headers": {"Content-Type": "application/json"},
        },
        413,
        "larger than",
    ),
    (
        "nested JSON within limits",
        lambda: {
            "data": b'{"a":' + b"[" * 1500 + b"]" * 1500 + b"}",
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "nested more than 64 levels",
    ),
    (
        "huge integer",
        lambda: {
            "data": b'{"n": 1' + b"0" * 400 + b"}",
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "invalid JSON",
    ),
    (
        "unsupported content type",
        lambda: {"data": b"hello", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported request content type",
    ),
    (
        "text file",
        lambda: {"data": form(("notes.txt", b"just some text"))},
        415,
        "unsupported type",
    ),
    (
        "executable disguised as jpg",
        lambda: {"data": form(("cat.jpg", b"\x7fELF\x02\x01\x01" + b"\x00" * 100))},
        415,
        "unsupported",
    ),
    (
        "camera RAW (CR2)",
        lambda: {"data": form(("IMG_0001.CR2", b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(600)))},
        415,
        "is a camera RAW file (Canon CR2), which is not accepted",
    ),
    (
        "camera RAW (DNG) after a good image",
        lambda: {"data": form(("a.jpg", make_jpeg(49)), ("IMG_0002.dng", dng_bytes()))},
        415,
        "file 'IMG_0002.dng' is a camera RAW file (Adobe DNG)",
    ),
    ("empty file", lambda: {"data": form(("empty.jpg", b""))}, 400, "is empty"),
    ("image too large", lambda: {"data": form(("big.jpg", BIG_JPEG))}, 413, "larger than"),
    (
        "too many files",
        lambda: {"data": form(*((f"{i}.jpg", make_jpeg(i)) for i in range(4)))},
        413,
        "too many files",
    ),
    (
        "bad file after good ones",
        lambda: {
            "data": form(("a.jpg", make_jpeg(50)), ("b.jpg", make_jpeg(51)), ("c.txt", b"text"))
        },
        415,
        "unsupported",
    ),
    (
        "oversized file after a good one",
        lambda: {"data": form(("a.jpg", make_jpeg(52)), ("big.jpg", BIG_JPEG))},
        413,
        "larger",
    ),
    (
        "invalid payload",
        lambda: {"data": form(("a.jpg", make_jpeg(53)), payload="{nope")},
        400,
        "invalid JSON in payload",
    ),
    (
        "unknown field",
        lambda: {"data": multipart([("file[]", make_jpeg(54), "a.jpg")])},
        400,
        "unknown form field",
    ),
    (
        "bad owner",
        lambda: {"data": form(("a.jpg", make_jpeg(55)), owner="../../etc")},
        400,
        "owner",
    ),
    (
        "field too long",
        lambda: {"data": form(("a.jpg", make_jpeg(56)), comments="c" * 400)},
        413,
        "larger than",
    ),
    (
        "bad idempotency key",
        lambda: {"data": form(("a.jpg", make_jpeg(57)), idempotency_key="has space")},
        400,
        "idempotency_key",
    ),
    (
        "truncated multipart",
        lambda: {
            "data": b'--XyZ\r\nContent-Disposition: form-data; name="files[]"; filename="a.jpg"'
            b"\r\n\r\n" + make_jpeg(58)[:500],
            "headers": raw(b"")[1],
        },
        400,
        "malformed",
    ),
    ("garbage multipart", lambda: {"data": b"\x00\xff" * 100, "headers": raw(b"")[1]}, 400, ""),
    (
        "thousands of form parts",
        lambda: {"data": multipart([("owner", b"x", "x")] * 2000)},
        413,
        "too many parts",
    ),
    ("urlencoded unknown field", lambda: {"data": {"nope": "1"}}, 400, "unknown form field"),
    # PostgreSQL text and jsonb cannot hold a NUL character: refused wherever text comes in.
    (
        "NUL in multipart comments",
        lambda: {"data": form(("a.jpg", make_jpeg(60)), comments="a\x00b")},
        400,
        "field 'comments' contains a NUL character",
    ),
    (
        "NUL in urlencoded comments",
        lambda: {"data": {"payload": '{"a": 1}', "comments": "a\x00b"}},
        400,
        "field 'comments' contains a NUL character",
    ),
    (
        "NUL in query string comments",
        lambda: {"json": {"a": 1}, "params": {"comments": "a\x00b"}},
        400,
        "query parameter 'comments' contains a NUL character",
    ),
    ("NUL escape in JSON value", lambda: json_body(b'{"a": "x\\u0000y"}'), 400, "NUL"),
    ("NUL escape in JSON key", lambda: json_body(b'{"k\\u0000": 1}'), 400, "NUL"),
    (
        "NUL escape after an escaped backslash",
        lambda: json_body(b'[{"a": 1}, {"b": ["\\\\\\u0000"]}]'),
        400,
        "JSON body contains a NUL character",
    ),
    (
        "NUL escape in urlencoded payload",
        lambda: {"data": {"payload": '{"a": "\\u0000"}'}},
        400,
        "payload contains a NUL character",
    ),
    (
        "NUL escape in multipart payload",
        lambda: {"data": form(("a.jpg", make_jpeg(61)), payload='{"a": "\\u0000"}')},
        400,
        "payload contains a NUL character",
    ),
    (
        "NUL escape in a JSON file",
        lambda: {"data": form(("doc.json", b'{"a": "\\u0000"}'))},
        400,
        "'doc.json' contains a NUL character",
    ),
    # Nested deeper than MAX_JSON_DEPTH (64): refused before it is parsed.
    ("JSON body 1,000 deep", lambda: json_body(DEEP), 400, "nested more than 64 levels"),
    (
        "urlencoded payload 1,000 deep",
        lambda: {"data": {"payload": DEEP.decode()}},
        400,
        "payload is nested more than 64 levels",
    ),
    (
        "multipart payload 1,000 deep",
        lambda: {"data": form(("a.jpg", make_jpeg(62)), payload=DEEP.decode())},
        400,
        "payload is nested more than 64 levels",
    ),
    (
        "JSON file 1,000 deep",
        lambda: {"data": form(("deep.json", DEEP))},
        400,
        "'deep.json' is nested more than 64 levels",
    ),
]


@pytest.mark.both_storage_backends
@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "message"), CASES, ids=[c[0] for c in CASES]
)
async def test_ingest_refuses_cleanly_when_input_is_bad(
    start_gateway: Callable[..., Any],
    db: asyncpg.Connection,
    storage: Storage,
    storage_path: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
    case: str,
    request_kwargs: Callable[[], dict[str, Any]],
    status: int,
    message: str,
) -> None:
    async with start_gateway(**LIMITS) as gateway:
        response = await gateway.client.post("/api/v1/ingest", **request_kwargs())
        assert response.status == status, await response.text()
        body = await response.json()
        assert message in body["error"]
        assert body["request_id"] == response.headers["X-Request-ID"]
        for table in ("jobs", "uploads", "content", "outbox", "idempotency_keys"):
            assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        assert await stored_objects(storage) == []
        assert await storage.temp_files() == []
        if storage.backend == "filesystem":  # not even a probe or a read link
            assert list((storage_path / "tmp").iterdir()) == []
        assert await read_queue(amqp, gateway.media_queue, expect=0, settle=0.2) == []
        # The gateway still works after the bad request.
        ok = await gateway.client.post("/api/v1/ingest", data=form(("ok.jpg", make_jpeg(999))))
        assert ok.status == 202


async def test_ingest_answers_503_with_retry_after_when_disk_is_low(
    start_gateway: Callable[..., Any],
    db: asyncpg.Connection,
) -> None:
    async with start_gateway(min_free_disk_bytes=2**62) as gateway:
        response = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(1))))
        assert response.status == 503
        assert int(response.headers["Retry-After"]) > 0
        assert "free space" in (await response.json())["error"]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_ingest_answers_503_without_naming_paths_when_storage_cannot_write(
    gateway: Gateway, storage_path: Path, db: asyncpg.Connection
) -> None:
    # Where uploads are staged is not a folder any more (chmod would not stop root).
    (storage_path / "tmp").rmdir()
    (storage_path / "tmp").write_bytes(b"")
    response = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(3))))
    assert response.status == 503 and "Retry-After" in response.headers
    text = await response.text()
    assert "storage cannot accept" in text
    assert str(storage_path) not in text and "tmp" not in text
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_ingest_answers_503_when_outbox_lags_and_recovers_when_it_drains(
    start_gateway: Callable[..., Any],
    db: asyncpg.Connection,
) -> None:
    async with start_gateway(outbox_max_lag_seconds=30, outbox_relay_enabled=False) as gateway:
        await db.execute(
            """INSERT INTO outbox (message_id, routing_key, body, created_at)
               VALUES (gen_random_uuid(), 'media.ingested.v1', '{}', now() - interval '1 minute')"""
        )
        await gateway.deps.backpressure.refresh()
        response = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(2))))
        assert response.status == 503
        assert "Retry-After" in response.headers
        assert (await response.json())["details"]["pending"] == 1
        await db.execute("UPDATE outbox SET sent_at = now()")
        await gateway.deps.backpressure.refresh()
        response = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(2))))
        assert response.status == 202


async def test_ingest_cleans_temp_files_when_client_disconnects_mid_upload(
    gateway: Gateway,
    storage_path: Path,
    db: asyncpg.Connection,
) -> None:
    host, port = gateway.client.host, gateway.client.port
    _, writer = await asyncio.open_connection(host, port)
    head = (
        b'--XyZ\r\nContent-Disposition: form-data; name="files[]"; filename="a.jpg"\r\n\r\n'
        + make_jpeg(3, size=(300, 300))[:20000]
    )
    writer.write(
        b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
        b"Content-Length: 10000000\r\n\r\n" + head
    )
    await writer.drain()
    for _ in range(100):
        if list((storage_path / "tmp").glob("*.part")):
            break
        await asyncio.sleep(0.02)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if not list((storage_path / "tmp").glob("*.part")):
            break
        await asyncio.sleep(0.05)
    assert list((storage_path / "tmp").glob("*.part")) == []
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_ingest_answers_400_when_a_multipart_part_header_is_invalid(gateway: Gateway) -> None:
    # Found by fuzzing from the OpenAPI document: a control character in a part's header.
    body = b'--b\r\nContent-Disposition: form-data; name="\x00\x84bad"\r\n\r\nx\r\n--b--\r\n'
    response = await gateway.client.post(
        "/api/v1/ingest", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status == 400, await response.text()
    assert "malformed" in (await response.json())["error"]
