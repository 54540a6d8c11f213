"""Hostile values on the endpoints besides ingest (test_ingest_errors.py has ingest's): NUL
characters, JSON nested too deep, numbers out of range. Each is a 4xx JSON error naming the
problem, never a 500."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import FormData

from common.vectors import register_model
from tests.conftest import make_jpeg
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form

MODEL = "test/model"
DEEP = b"[" * 1000 + b"]" * 1000


async def searchable_upload(gateway: Gateway, db: asyncpg.Connection) -> str:
    """An upload with an embedding, so that a search `like` it reaches the search's filters."""
    response = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(1))))
    upload_id = (await response.json())["system_ids"][0]
    await register_model(db, MODEL, 3)
    await db.execute(
        """INSERT INTO embeddings (content_id, model_id, embedding)
           SELECT content_id, $2, '[1,0,0]' FROM uploads WHERE id = $1""",
        uuid.UUID(upload_id),
        MODEL,
    )
    return str(upload_id)


def image_search(**fields: str) -> FormData:
    data = FormData()
    data.add_field("image", make_jpeg(2), filename="q.jpg", content_type="image/jpeg")
    for name, value in fields.items():
        data.add_field(name, value)
    return data


def json_request(value: Any) -> dict[str, Any]:
    # orjson writes a NUL character as the escape \u0000, as any client would.
    return {"data": orjson.dumps(value), "headers": {"Content-Type": "application/json"}}


NUL_CASES: list[tuple[str, str, Callable[[str], dict[str, Any]], str]] = [
    ("GET", "/api/v1/search?like={like}&owner=a%00b", lambda _: {}, "query parameter 'owner'"),
    ("GET", "/api/v1/search?like={like}&tags=x,a%00b", lambda _: {}, "query parameter 'tags'"),
    ("GET", "/api/v1/clusters?model_id=a%00b", lambda _: {}, "query parameter 'model_id'"),
    ("GET", "/api/v1/admin/dlq?queue=a%00b", lambda _: {}, "query parameter 'queue'"),
    ("GET", "/api/v1/clusters?a%00=1", lambda _: {}, "a query parameter name"),
    (
        "POST",
        "/api/v1/search",
        lambda like: json_request({"like": like, "owner": "a\x00b"}),
        "JSON body contains a NUL character",
    ),
    (
        "POST",
        "/api/v1/search",
        lambda like: json_request({"like": like, "tags": ["x", "a\x00b"]}),
        "JSON body contains a NUL character",
    ),
    (
        "POST",
        "/api/v1/search",
        lambda _: {"data": image_search(owner="a\x00b")},
        "field 'owner' contains a NUL character",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "request_kwargs", "message"),
    NUL_CASES,
    ids=[f"{c[0]} {c[1]} {c[3]}" for c in NUL_CASES],
)
async def test_endpoints_answer_400_naming_the_field_when_text_holds_a_nul(
    start_gateway: Callable[..., Any],
    db: asyncpg.Connection,
    method: str,
    path: str,
    request_kwargs: Callable[[str], dict[str, Any]],
    message: str,
) -> None:
    async with start_gateway(search_embed_timeout_s=0.5) as gateway:
        like = await searchable_upload(gateway, db)
        response = await gateway.client.request(
            method, path.format(like=like), **request_kwargs(like)
        )
        assert response.status == 400, await response.text()
        body = await response.json()
        assert message in body["error"] and "NUL" in body["error"]
        assert body["request_id"] == response.headers["X-Request-ID"]


async def test_search_answers_400_naming_the_limit_when_its_body_is_nested_too_deep(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    like = await searchable_upload(gateway, db)
    for field in (b"tags", b"deep"):
        body = b'{"like": "%s", "%s": %s}' % (like.encode(), field, DEEP)
        response = await gateway.client.post(
            "/api/v1/search", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400, await response.text()
        error = await response.json()
        assert "nested more than 64 levels" in error["error"]
        assert error["details"] == {"limit": 64}
    # As deep as the limit is fine (a search with an unknown field is refused for that).
    shallow: Any = "x"
    for _ in range(63):
        shallow = [shallow]
    response = await gateway.client.post(
        "/api/v1/search", **json_request({"like": like, "deep": shallow})
    )
    assert response.status == 400
    assert "deep" in str((await response.json())["details"])


async def test_numbers_out_of_range_answer_400_when_given_to_any_endpoint(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    like = await searchable_upload(gateway, db)
    huge = "9" * 30
    for path in (
        f"/api/v1/clusters?limit={huge}",
        f"/api/v1/clusters?offset={huge}",
        "/api/v1/clusters?offset=1e3",
        f"/api/v1/clusters/{uuid.uuid4()}?offset={huge}",
        f"/api/v1/admin/dlq?limit={huge}",
        f"/api/v1/admin/dlq?offset={huge}",
        f"/api/v1/search?like={like}&limit={huge}",
        f"/api/v1/search?like={like}&offset={huge}",
        f"/api/v1/search?like={like}&threshold=-1e400",
        f"/api/v1/search?like={like}&threshold=inf",
    ):
        response = await gateway.client.get(path)
        assert response.status == 400, (path, await response.text())
        assert (await response.json())["request_id"]
    for field in (b'"offset": 1e300', b'"limit": 1' + b"0" * 30):
        body = b'{"like": "%s", %s}' % (like.encode(), field)
        response = await gateway.client.post(
            "/api/v1/search", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400, (body, await response.text())
    # A tiny threshold is only compared, never stored: a valid search.
    response = await gateway.client.get(f"/api/v1/search?like={like}&threshold=1e-300")
    assert response.status == 200, await response.text()
