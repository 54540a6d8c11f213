"""Gemini's failure modes, through the real google-genai client and a fake server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY

from analyzer.handlers import AnalyzerDeps
from common.messages import MediaAnalyzed, MediaEmbedded
from common.topology import spec_of
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from tests.analyzer.fake_gemini import FakeGemini, Reply, answer, error
from tests.clusterer.conftest import colour_png, wait_for
from tests.clusterer.test_pipeline import upload
from tests.conftest import BusNames, read_queue
from tests.integration.conftest import Gateway

OUTCOMES = ("ok", "retry", "timeout", "rate_limited", "unauthorized", "invalid", "server_error",
            "fallback")  # fmt: skip


def counts() -> dict[str, float]:
    return {
        o: REGISTRY.get_sample_value("vlm_requests_total", {"outcome": o}) or 0.0 for o in OUTCOMES
    }


def delta(before: dict[str, float]) -> dict[str, int]:
    now = counts()
    return {o: int(now[o] - before[o]) for o in OUTCOMES if now[o] != before[o]}


async def analysed(db: asyncpg.Connection, upload_id: str) -> dict[str, Any]:
    query = """SELECT c.id, c.analysis, c.analysis_model, c.analyzed_at, c.tags, c.stage
               FROM uploads u JOIN content c ON c.id = u.content_id WHERE u.id = $1"""

    async def done() -> bool:
        row = await db.fetchrow(query, uuid.UUID(upload_id))
        return row is not None and row["analyzed_at"] is not None

    await wait_for(done, what="the analysis", timeout=30)
    row = await db.fetchrow(query, uuid.UUID(upload_id))
    assert row is not None
    return {**dict(row), "analysis": orjson.loads(row["analysis"])}


async def nothing_left(amqp: aio_pika.abc.AbstractRobustConnection, bus_names: BusNames) -> None:
    """No message stuck: the analyzer's queue is drained and nothing was parked."""
    spec = spec_of(bus_names.specs, "analyzer")
    channel = await amqp.channel()
    queue = await channel.declare_queue(spec.name, passive=True)
    assert queue.declaration_result.message_count == 0
    await channel.close()
    assert await read_queue(amqp, spec.parking, expect=0, settle=0.2) == []


SCENARIOS: dict[str, tuple[list[Reply], Reply, dict[str, Any], str, dict[str, int]]] = {
    # name: (scripted replies, then the default reply, settings, who analyses, metric deltas)
    "success": ([], answer(), {}, "gemini-test", {"ok": 1}),
    "429 twice then success": (
        [error(429, retry_delay="0.3s"), error(429)],
        answer(),
        {},
        "gemini-test",
        {"rate_limited": 2, "retry": 2, "ok": 1},
    ),
    "slow past the timeout": (
        [],
        Reply(text="{}", delay=1.0),
        {"vlm_timeout": 0.3, "vlm_max_retries": 1},
        "clip-fallback",
        {"timeout": 2, "retry": 1, "fallback": 1},
    ),
    "401": ([], error(401), {}, "clip-fallback", {"unauthorized": 1, "fallback": 1}),
    "invalid JSON": (
        [],
        Reply(text="{not json"),
        {},
        "clip-fallback",
        {"invalid": 1, "fallback": 1},
    ),
    "answer breaks the schema": (
        [],
        Reply(text='{"tags": "red", "description": 3}'),
        {},
        "clip-fallback",
        {"invalid": 1, "fallback": 1},
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_analyzer_ends_with_an_analysis_when_gemini_behaves_so(
    scenario: str,
    gemini: FakeGemini,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
    bus_names: BusNames,
) -> None:
    script, default, overrides, by, expected = SCENARIOS[scenario]
    gemini.script, gemini.default = list(script), default
    async with start_analyzer(**overrides) as analyzer:
        before = counts()
        [upload_id] = await upload(gateway, ("red.png", colour_png(COLOURS["red"], seed=1)))
        row = await analysed(db, upload_id)
        assert row["analysis_model"] == by
        assert delta(before) == expected
        if by == "gemini-test":
            # Tags deduplicated and lowercased; the image was sent once per call, as JPEG.
            assert row["tags"] == ["red", "abstract", "colour field"]
            assert row["analysis"]["suggested_cluster_name"] == "Red studies"
            assert row["analysis"]["model"] == "gemini-test"
            sent = gemini.images_sent()
            assert len(sent) == len(gemini.calls) and {m for m, _ in sent} == {"image/jpeg"}
            assert sent[0][1][:3] == b"\xff\xd8\xff"  # a JPEG, whatever was uploaded
            assert all(c.api_key == "test-key" for c in gemini.calls)
        else:
            # CLIP zero-shot from the image's own embedding: the colour model says red.
            assert row["tags"][0] == "red" and row["analysis"]["source"] == "clip-fallback"
            assert row["analysis"]["primary_category"] == "red"
        if scenario == "429 twice then success":
            # The server's retry delay (0.3 s) was honoured before the second call.
            assert gemini.calls[1].at - gemini.calls[0].at >= 0.3
        if scenario == "401":
            # /health says so, and the next image does not try the refused key again.
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{analyzer.probe_port}/health"
                async with session.get(url) as response:
                    assert (await response.json())["vlm"] == "unauthorized"
            calls = len(gemini.calls)
            [second] = await upload(gateway, ("green.png", colour_png(COLOURS["green"], seed=2)))
            assert (await analysed(db, second))["analysis_model"] == "clip-fallback"
            assert len(gemini.calls) == calls
        await nothing_left(amqp, bus_names)


async def test_breaker_opens_after_server_errors_and_recovers_when_gemini_does(
    gemini: FakeGemini,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
    bus_names: BusNames,
) -> None:
    gemini.default = error(500)
    async with start_analyzer(
        vlm_max_retries=5, vlm_breaker_failures=3, vlm_breaker_reset_s=1.0
    ) as deps:
        before = counts()
        [first] = await upload(gateway, ("red.png", colour_png(COLOURS["red"], seed=3)))
        assert (await analysed(db, first))["analysis_model"] == "clip-fallback"
        # Three failures open the breaker; the remaining retries are not sent at all.
        assert len(gemini.calls) == 3
        assert delta(before) == {"server_error": 3, "retry": 3, "fallback": 1}
        assert deps.vlm is not None and deps.vlm.status == "breaker open"
        # While open, images fall back at once without a call.
        [second] = await upload(gateway, ("blue.png", colour_png(COLOURS["blue"], seed=4)))
        assert (await analysed(db, second))["analysis_model"] == "clip-fallback"
        assert len(gemini.calls) == 3
        # Gemini recovers; after the reset time one trial call closes the breaker again.
        gemini.default = answer()

        async def half_open() -> bool:
            return deps.vlm is not None and deps.vlm.status == "breaker half-open"

        await wait_for(half_open, what="the breaker to half-open", timeout=5)
        [third] = await upload(gateway, ("green.png", colour_png(COLOURS["green"], seed=5)))
        assert (await analysed(db, third))["analysis_model"] == "gemini-test"
        assert deps.vlm.status == "ok"
        await nothing_left(amqp, bus_names)


async def test_analyzer_reuses_the_stored_analysis_when_redelivered(
    gemini: FakeGemini,
    start_analyzer: Callable[..., AbstractAsyncContextManager[AnalyzerDeps]],
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
    bus_names: BusNames,
) -> None:
    async with start_analyzer() as deps:
        image = colour_png(COLOURS["red"], seed=6)
        [first] = await upload(gateway, ("a.png", image))
        [second] = await upload(gateway, ("b.png", image))  # the same bytes, another upload
        row = await analysed(db, first)
        assert (await analysed(db, second))["id"] == row["id"]
        assert len(gemini.calls) == 1  # content is analysed once
        # A redelivery of media.embedded re-publishes media.analyzed without calling Gemini.
        spec = spec_of(bus_names.specs, "clusterer", MediaAnalyzed.routing_key)
        await read_queue(amqp, spec.name, expect=1, settle=0.2)
        event = MediaEmbedded(
            content_id=row["id"],
            job_id=uuid.uuid4(),
            kind="image",
            model_id=colour_embedder.model_id,
        )
        await deps.bus.publish(event.routing_key, event.to_bytes(), message_id="again")
        [again] = await read_queue(amqp, spec.name, expect=1, timeout=10)
        republished = MediaAnalyzed.model_validate_json(again.body)
        assert republished.vlm_model == "gemini-test"
        assert republished.suggested_cluster_name == "Red studies"
        assert len(gemini.calls) == 1
