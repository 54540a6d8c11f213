"""The timeline endpoint and the trace fields of job status, with the gateway alone: what a
recorded and an unrecorded trace look like, stage rows as consumers write them, bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from common.stage_log import Delivery, StageLog
from tests.conftest import make_jpeg
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form

TRACE_UI = "http://jaeger.example:16686/trace/{trace_id}"


def traceparent(sampled: bool) -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-{'01' if sampled else '00'}"


async def ingest(gateway: Gateway, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await gateway.client.post(
        "/api/v1/ingest", data=form(("a.jpg", make_jpeg(1))), headers=headers or {}
    )
    assert response.status == 202
    body: dict[str, Any] = await response.json()
    return body


@pytest.mark.parametrize("sampled", [True, False])
async def test_status_says_whether_the_trace_was_recorded_and_links_only_a_recorded_one(
    start_gateway: Any, sampled: bool
) -> None:
    async with start_gateway(trace_ui_url=TRACE_UI) as gateway:
        # A caller's own trace context decides (parent-based sampling).
        header = traceparent(sampled)
        job = await ingest(gateway, {"traceparent": header})
        status = await (await gateway.client.get(f"/api/v1/ingest/{job['job_id']}/status")).json()
        timeline = await (
            await gateway.client.get(f"/api/v1/ingest/{job['job_id']}/timeline")
        ).json()
    trace_id = header.split("-")[1]
    assert status["trace_id"] == timeline["trace_id"] == trace_id
    assert status["trace_sampled"] is timeline["trace_sampled"] is sampled
    link = TRACE_UI.replace("{trace_id}", trace_id) if sampled else None
    assert status["trace_url"] == timeline["trace_url"] == link
    assert status["timeline"] == f"/api/v1/ingest/{job['job_id']}/timeline"


async def test_the_timeline_shows_what_consumers_logged_and_what_is_still_pending(
    gateway: Gateway, database_url: str, db: asyncpg.Connection
) -> None:
    job = await ingest(gateway)
    job_id = uuid.UUID(job["job_id"])
    content_id = await db.fetchval("SELECT content_id FROM uploads WHERE job_id = $1", job_id)
    url = f"/api/v1/ingest/{job_id}/timeline"
    first = await (await gateway.client.get(url)).json()
    stages = first["uploads"][0]["stages"]
    assert [s["stage"] for s in stages] == ["ingest", "embed", "cluster", "analyze"]
    assert stages[0]["service"] == "gateway" and stages[0]["outcome"] == "ok"
    assert datetime.fromisoformat(stages[0]["started_at"]) <= datetime.fromisoformat(
        stages[0]["finished_at"]
    )
    assert [s["outcome"] for s in stages[1:]] == ["pending"] * 3

    # What the embedder's consumer would log: a first attempt that failed, a second that did it.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        log = StageLog(pool)
        now = datetime.now(UTC).timestamp()
        delivery = Delivery(
            stage="embed",
            message_id=uuid.uuid4(),
            service="embedder",
            queue="embedder.media-ingested",
            attempt=1,
            job_id=job_id,
            content_id=content_id,
            queued_at=now - 1.0,
            published_at=now - 0.9,
            trace_id="ab" * 16,
        )
        log.started(delivery, now - 0.8)
        await log.flush()  # the start alone: running
        running = await (await gateway.client.get(url)).json()
        embed = running["uploads"][0]["stages"][1]
        assert embed["outcome"] == "running" and embed["finished_at"] is None
        log.finished(delivery, now - 0.8, now - 0.7, "retried", "Retryable: not yet")
        again = Delivery(**{**delivery.__dict__, "attempt": 2})
        log.started(again, now - 0.5)
        log.finished(again, now - 0.5, now - 0.2, "ok", None)
        await log.flush()
    finally:
        await pool.close()
    body = await (await gateway.client.get(url)).json()
    embed = body["uploads"][0]["stages"][1]
    assert embed["stage"] == "embed" and embed["outcome"] == "ok"
    assert embed["attempts"] == 2
    assert embed["error"] == "Retryable: not yet"  # what the retried attempt met
    assert embed["work_seconds"] == pytest.approx(0.4, abs=0.01)
    assert embed["wait_seconds"] == pytest.approx(0.8 - 0.4, abs=0.01)
    assert embed["outbox_wait_seconds"] == pytest.approx(0.1, abs=0.01)
    started = datetime.fromisoformat(embed["started_at"]).timestamp()
    assert started == pytest.approx(now - 0.8, abs=0.001)  # the first attempt's start
    text = await (await gateway.client.get(url, params={"format": "text"})).text()
    assert "embed" in text and "ok" in text and "2" in text and str(job_id) in text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/ingest/not-a-uuid/timeline", 400),
        (f"/api/v1/ingest/{uuid.uuid4()}/timeline", 404),
        (f"/api/v1/ingest/{uuid.uuid4()}/timeline?format=text", 404),
        ("/api/v1/ingest/%00/timeline", 400),
    ],
)
async def test_bad_timeline_requests_get_clear_errors(
    gateway: Gateway, path: str, status: int
) -> None:
    response = await gateway.client.get(path)
    assert response.status == status
    assert "error" in await response.json()


@pytest.mark.parametrize("wanted", ["xml", "", "TEXT", "text" * 100, "<script>"])
async def test_an_unknown_format_is_a_400_that_names_the_choices(
    gateway: Gateway, wanted: str
) -> None:
    job = await ingest(gateway)
    response = await gateway.client.get(
        f"/api/v1/ingest/{job['job_id']}/timeline", params={"format": wanted}
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "format must be json or text"
    assert len(body["details"]["format"]) <= 40


async def test_another_owners_job_has_no_timeline(start_gateway: Any) -> None:
    alice, bob = "a" * 24, "b" * 24
    async with start_gateway(api_keys=f"{alice}:write:alice,{bob}:read:bob") as gateway:
        response = await gateway.client.post(
            "/api/v1/ingest",
            data=form(("a.jpg", make_jpeg(3))),
            headers={"X-API-Key": alice},
        )
        job = (await response.json())["job_id"]
        url = f"/api/v1/ingest/{job}/timeline"
        assert (await gateway.client.get(url, headers={"X-API-Key": alice})).status == 200
        assert (await gateway.client.get(url, headers={"X-API-Key": bob})).status == 404


async def test_a_timeline_of_an_old_job_without_the_new_columns_still_answers(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    job = await ingest(gateway)
    # Jobs written before migration 0011 have no received_at, span or sampling decision.
    await db.execute(
        "UPDATE jobs SET received_at = NULL, trace_sampled = NULL, span_id = NULL WHERE id = $1",
        uuid.UUID(job["job_id"]),
    )
    body = await (await gateway.client.get(f"/api/v1/ingest/{job['job_id']}/timeline")).json()
    assert body["received_at"] is None and body["trace_sampled"] is None
    assert body["trace_url"] is None
    ingest_stage = body["uploads"][0]["stages"][0]
    assert ingest_stage["started_at"] is None and ingest_stage["work_seconds"] is None
    text = await (
        await gateway.client.get(
            f"/api/v1/ingest/{job['job_id']}/timeline", params={"format": "text"}
        )
    ).text()
    assert "(sampling not recorded)" in text


async def test_the_stage_log_forgets_messages_older_than_its_retention(
    database_url: str, db: asyncpg.Connection
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        log = StageLog(pool, retention_days=1)
        now = datetime.now(UTC).timestamp()
        for age_days in (3, 2, 0.5, 0):
            delivery = Delivery(
                stage="embed", message_id=uuid.uuid4(), service="embedder", queue="q", attempt=1
            )
            log.started(delivery, now - age_days * 86400)
            log.finished(delivery, now - age_days * 86400, now - age_days * 86400 + 0.1, "ok", None)
        await log.flush()
        assert await db.fetchval("SELECT count(*) FROM stage_runs") == 4
        assert await log.prune(batch=1) == 2  # in batches, until none is left
        assert await db.fetchval("SELECT count(*) FROM stage_runs") == 2
        assert await StageLog(pool, retention_days=1).prune() == 0
    finally:
        await pool.close()
