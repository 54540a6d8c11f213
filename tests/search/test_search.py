"""Text and image-to-image search over a library whose meaning is known (the colour model)."""

from __future__ import annotations

import io
import urllib.parse
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import FormData

from analyzer.handlers import AnalyzerDeps
from clusterer.handlers import ClustererDeps
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from tests.analyzer.fake_gemini import GOOD_ANSWER, FakeGemini, answer
from tests.clusterer.conftest import colour_png, wait_for
from tests.clusterer.test_pipeline import wait_done
from tests.integration.conftest import Gateway


async def ingest(gateway: Gateway, owner: str, *files: tuple[str, bytes]) -> list[str]:
    data = FormData(quote_fields=False)
    for name, content in files:
        data.add_field("files[]", content, filename=name, content_type="application/octet-stream")
    data.add_field("owner", owner)
    response = await gateway.client.post("/api/v1/ingest", data=data)
    assert response.status == 202, await response.text()
    ids: list[str] = (await response.json())["system_ids"]
    return ids


async def search(gateway: Gateway, query: str) -> tuple[int, Any]:
    response = await gateway.client.get(f"/api/v1/search?{query}")
    return response.status, await response.json()


async def test_search_finds_by_text_and_by_example_when_the_library_has_known_meaning(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    async with start_analyzer(vlm_enabled=False):  # tags from the CLIP fallback: colour words
        reds = await ingest(
            gateway,
            "alice",
            *((f"red{i}.png", colour_png(COLOURS["red"], seed=i)) for i in range(3)),
        )
        blues = await ingest(
            gateway,
            "bob",
            *((f"blue{i}.png", colour_png(COLOURS["blue"], seed=10 + i)) for i in range(3)),
        )
        greens = await ingest(
            gateway,
            "alice",
            *((f"green{i}.png", colour_png(COLOURS["green"], seed=20 + i)) for i in range(2)),
        )
        everything = reds + blues + greens
        await wait_done(everything, db, storage_path)

        async def analysed() -> bool:
            left: int = await db.fetchval("SELECT count(*) FROM content WHERE analyzed_at IS NULL")
            return left == 0

        await wait_for(analysed, what="every image analysed")

    # Text: the red images first, best first, each with its cluster, tags and links.
    status, body = await search(gateway, "query=a%20red%20photo&limit=3")
    assert status == 200, body
    assert [r["id"] for r in body["results"]] and {r["id"] for r in body["results"]} == set(reds)
    sims = [r["similarity"] for r in body["results"]]
    assert sims == sorted(sims, reverse=True) and sims[-1] > 0.9
    first = body["results"][0]
    assert first["cluster"]["name"] == "red" and "red" in first["tags"]
    assert first["owner"] == "alice" and first["kind"] == "image"
    assert (await gateway.client.get(first["thumbnail_url"])).status == 200
    assert (await gateway.client.get(first["content_url"])).status == 200
    # Only the reds reach the default threshold (0.2): no further page.
    assert body["total"] == 3 and body["has_more"] is False and body["query_time_ms"] > 0
    assert body["model_id"] == colour_embedder.model_id

    # Nothing reaches the threshold: an empty answer, not the least bad ones.
    status, body = await search(gateway, "query=a%20photo&threshold=0.5")
    assert status == 200 and body["results"] == [] and body["total"] == 0 and not body["has_more"]
    status, body = await search(gateway, "query=a%20photo&threshold=0&limit=100")
    assert len(body["results"]) == len(everything)  # ~0.32 to everything: all pass 0

    # Filters narrow; paging walks on.
    status, body = await search(gateway, "query=a%20red%20photo&threshold=0&owner=bob&limit=100")
    assert {r["id"] for r in body["results"]} == set(blues)
    status, body = await search(gateway, "query=a%20photo&threshold=0&tags=green")
    assert {r["id"] for r in body["results"]} == set(greens)
    status, body = await search(
        gateway, "query=a%20photo&threshold=0&tags=green,blue&tags_mode=any&limit=100"
    )
    assert {r["id"] for r in body["results"]} == set(greens + blues)
    status, body = await search(
        gateway, "query=a%20photo&threshold=0&tags=green,blue&tags_mode=all"
    )
    assert body["results"] == []
    status, body = await search(gateway, "query=a%20photo&threshold=0&kind=video")
    assert body["results"] == []
    red_cluster = await db.fetchval("SELECT id FROM clusters WHERE name = 'red'")
    status, body = await search(
        gateway, f"query=a%20blue%20photo&threshold=0&cluster_id={red_cluster}&limit=100"
    )
    assert {r["id"] for r in body["results"]} == set(reds)
    # By upload date: the greens were uploaded ten days ago (as the database now says).
    await db.execute(
        "UPDATE uploads SET created_at = now() - interval '10 days' WHERE id = ANY($1::uuid[])",
        [uuid.UUID(g) for g in greens],
    )
    week_ago = urllib.parse.quote((datetime.now(UTC) - timedelta(days=7)).isoformat())
    status, body = await search(
        gateway, f"query=a%20photo&threshold=0&limit=100&uploaded_before={week_ago}"
    )
    assert {r["id"] for r in body["results"]} == set(greens)
    status, body = await search(
        gateway, f"query=a%20photo&threshold=0&limit=100&uploaded_after={week_ago}"
    )
    assert {r["id"] for r in body["results"]} == set(everything) - set(greens)
    pages = []
    for offset in (0, 3, 6):
        status, body = await search(gateway, f"query=a%20photo&threshold=0&limit=3&offset={offset}")
        pages.append([r["id"] for r in body["results"]])
        assert body["has_more"] is (offset < 6)
    assert sorted(i for page in pages for i in page) == sorted(everything)

    # POST takes the same search as JSON.
    response = await gateway.client.post(
        "/api/v1/search", json={"query": "a green photo", "limit": 2, "threshold": 0.9}
    )
    body = await response.json()
    assert response.status == 200 and {r["id"] for r in body["results"]} == set(greens)

    # By example: like=<upload> finds the same kind, never itself; the same bytes uploaded
    # again are one hit.
    [again] = await ingest(gateway, "carol", ("red-again.png", colour_png(COLOURS["red"], seed=0)))
    await wait_done([again], db, storage_path)
    status, body = await search(gateway, f"like={reds[1]}&threshold=0.9&limit=10")
    assert status == 200
    content_of = {
        str(r["id"]): str(r["content_id"])
        for r in await db.fetch("SELECT id, content_id FROM uploads")
    }
    found = [r["content_id"] for r in body["results"]]
    assert len(found) == len(set(found)) == 2  # the two other red contents, each once
    assert content_of[reds[1]] not in found
    assert {content_of[reds[0]], content_of[reds[2]]} == set(found)

    # By an uploaded image (multipart): the same kind, filters apply.
    def image_form(image: bytes, **fields: str) -> FormData:
        data = FormData(quote_fields=False)
        data.add_field("image", io.BytesIO(image), filename="q.png", content_type="image/png")
        for key, value in fields.items():
            data.add_field(key, value)
        return data

    response = await gateway.client.post(
        "/api/v1/search", data=image_form(colour_png(COLOURS["blue"], seed=99), threshold="0.9")
    )
    body = await response.json()
    assert response.status == 200, body
    assert {r["id"] for r in body["results"]} == set(blues)
    response = await gateway.client.post(
        "/api/v1/search",
        data=image_form(
            colour_png(COLOURS["blue"], seed=99), threshold="0", owner="alice", tags="green"
        ),
    )
    assert {r["id"] for r in (await response.json())["results"]} == set(greens)
    for form, status in (
        (image_form(b"\x89PNG\r\n\x1a\n not really"), 400),  # not a readable image
        (image_form(colour_png(COLOURS["red"], 1), query="red"), 400),
        (image_form(colour_png(COLOURS["red"], 1), nonsense="1"), 400),
        (image_form(colour_png(COLOURS["red"], 1), limit="500"), 400),
        (image_form(b"x" * (10 * 1024 * 1024 + 1)), 413),
    ):
        response = await gateway.client.post("/api/v1/search", data=form)
        assert response.status == status, await response.text()
    no_image = FormData()
    no_image.add_field("threshold", "0.5")
    assert (await gateway.client.post("/api/v1/search", data=no_image)).status == 400

    # search_latency_seconds is exported.
    metrics = await (await gateway.client.get("/metrics")).text()
    assert 'search_latency_seconds_count{query="text"}' in metrics
    assert 'search_latency_seconds_count{query="like"}' in metrics
    assert 'search_latency_seconds_count{query="image"}' in metrics


async def test_search_refuses_bad_requests_with_clear_errors(
    gateway: Gateway, colour_embedder: EmbedderDeps
) -> None:
    bad_queries = [
        "",
        "query=",
        "query=%20%20",
        f"query=x&like={uuid.uuid4()}",
        "query=x&limit=0",
        "query=x&limit=101",
        "query=x&limit=ten",
        "query=x&offset=-1",
        "query=x&threshold=2",
        "query=x&threshold=nan",
        "query=x&kind=json",
        "query=x&tags_mode=some",
        "query=x&cluster_id=nope",
        "query=x&unknown=1",
        "like=not-a-uuid",
        "query=" + "x" * 1001,
        "query=x&tags=" + ",".join(f"t{i}" for i in range(21)),
        "query=x&tags=" + "y" * 101,
        "query=x&uploaded_after=yesterday",
        "query=x&uploaded_after=2026-01-01T00:00:00",  # no time zone
        "query=x&uploaded_after=2026-02-01T00:00:00Z&uploaded_before=2026-01-01T00:00:00Z",
    ]
    for query in bad_queries:
        status, body = await search(gateway, query)
        assert status == 400, (query, body)
        assert body["error"] and body["request_id"]
    assert (await search(gateway, f"like={uuid.uuid4()}"))[0] == 404
    for raw in (
        b"{nope",
        b"[]",
        b'"text"',
        b"null",
        b'{"query": 5}',
        b'{"query": "x", "extra": 1}',
    ):
        response = await gateway.client.post(
            "/api/v1/search", data=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400, raw
    response = await gateway.client.post(
        "/api/v1/search",
        data=orjson.dumps({"query": "x" * 70_000}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413


async def test_text_search_answers_503_when_no_embedder_answers(
    start_gateway: Callable[..., Any], db: asyncpg.Connection
) -> None:
    async with start_gateway(search_embed_timeout_s=0.3) as gateway:
        response = await gateway.client.get("/api/v1/search?query=anything")
        assert response.status == 503 and "Retry-After" in response.headers


async def test_text_seen_in_an_image_finds_it_when_searched_for(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    gemini: FakeGemini,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    scanned = {**GOOD_ANSWER, "visible_text": "INVOICE 2024 No. 0042 total 42.00 EUR"}
    async with start_analyzer():
        gemini.default = answer(scanned)
        [invoice] = await ingest(
            gateway, "alice", ("scan.png", colour_png(COLOURS["white"], seed=1))
        )
        await wait_done([invoice], db, storage_path)

        async def analysed() -> bool:
            left: int = await db.fetchval("SELECT count(*) FROM content WHERE analyzed_at IS NULL")
            return left == 0

        await wait_for(analysed, what="the scan analysed")
        gemini.default = answer()  # the others show no text
        others = await ingest(
            gateway,
            "alice",
            *((f"w{i}.png", colour_png(COLOURS["white"], seed=10 + i)) for i in range(3)),
        )
        await wait_done(others, db, storage_path)
        await wait_for(analysed, what="every image analysed")

    # To the colour model every white image is as close to "invoice 2024" as any other
    # (~0.32); the words read in the scan decide.
    status, body = await search(gateway, "query=invoice%202024&threshold=0.5")
    assert status == 200 and [r["id"] for r in body["results"]] == [invoice]
    hit = body["results"][0]
    assert hit["text_match"] is True and hit["score"] > hit["similarity"] + 0.4
    status, body = await search(gateway, "query=Invoice%20total&threshold=0&limit=10")
    assert body["results"][0]["id"] == invoice and len(body["results"]) == 4
    assert [r["text_match"] for r in body["results"]] == [True, False, False, False]
    # Every word must be there: 2025 is not, so nothing passes 0.5.
    status, body = await search(gateway, "query=invoice%202025&threshold=0.5")
    assert body["results"] == []
    # Filters hold for text matches too.
    status, body = await search(gateway, "query=invoice%202024&threshold=0.5&owner=bob")
    assert body["results"] == []


async def test_text_search_answers_409_when_the_model_has_no_text_encoder(
    gateway: Gateway,
    start_embedder: Callable[[Path, str], AbstractAsyncContextManager[EmbedderDeps]],
    lite2_models: Path,
) -> None:
    async with start_embedder(lite2_models, "efficientnet-lite2"):
        status, body = await search(gateway, "query=a%20cat")
        assert status == 409 and "no text encoder" in body["error"]
