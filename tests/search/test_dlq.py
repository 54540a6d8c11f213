"""Dead letters through the API: a poisoned image is listed with its error, and requeued once
its cause is fixed it ends done."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg

from clusterer.handlers import ClustererDeps
from embedder.app import running as embedder_running
from embedder.handlers import EmbedderDeps
from embedder.settings import EmbedderSettings
from mammoth_export.colour_model import COLOURS
from tests.clusterer.conftest import colour_png, wait_for
from tests.clusterer.test_pipeline import upload
from tests.conftest import make_jpeg
from tests.integration.conftest import Gateway


async def get(gateway: Gateway, path: str) -> tuple[int, Any]:
    response = await gateway.client.get(path)
    return response.status, await response.json()


async def test_dead_letter_is_listed_and_requeued_to_done_when_its_cause_is_fixed(
    gateway: Gateway,
    clusterer: ClustererDeps,
    common_settings: dict[str, Any],
    colour_models: Path,
    db: asyncpg.Connection,
) -> None:
    def embedder(**overrides: Any) -> AbstractAsyncContextManager[Any]:
        return embedder_running(
            EmbedderSettings(
                **common_settings,
                model_dir=colour_models,
                embedding_model="colour",
                onnx_providers=("cpu",),
                intra_op_threads=1,
                decode_workers=1,
                worker_http_port=0,
                **overrides,
            )
        )

    # An embedder configured too strictly takes a 48x40 image for a decompression bomb.
    async with embedder(max_image_pixels=1000):
        [upload_id] = await upload(gateway, ("red.png", colour_png(COLOURS["red"], seed=1)))
        job_id = (await get(gateway, f"/api/v1/objects/{upload_id}"))[1]["job_id"]

        async def listed() -> bool:
            return bool((await get(gateway, "/api/v1/admin/dlq"))[1])

        await wait_for(listed, what="the dead letter")
    status, body = await get(gateway, "/api/v1/admin/dlq")
    assert status == 200 and isinstance(body, list) and len(body) == 1
    [entry] = body
    assert entry["job_id"] == job_id and entry["upload_id"] == upload_id
    assert entry["queue"].endswith("embedder.media-ingested") and entry["attempts"] == 1
    assert "decompression bomb" in entry["error"] and entry["failed_at"]
    status, detail = await get(gateway, f"/api/v1/admin/dlq/{job_id}")
    assert status == 200 and detail[0]["body"]["content_id"] == entry["content_id"]
    assert (await get(gateway, f"/api/v1/ingest/{job_id}/status"))[1]["status"] == "failed"

    # The cause fixed (the limit back to its default), a requeue takes it all the way.
    async with embedder():
        response = await gateway.client.post(f"/api/v1/admin/dlq/{job_id}/requeue")
        assert response.status == 200 and (await response.json()) == {"requeued": 1}

        async def done() -> bool:
            status: str = (await get(gateway, f"/api/v1/ingest/{job_id}/status"))[1]["status"]
            return status == "done"

        await wait_for(done, what="the requeued job done", timeout=30)
    assert (await get(gateway, "/api/v1/admin/dlq"))[1] == []
    requeued = (await get(gateway, "/api/v1/admin/dlq?state=requeued"))[1]
    assert len(requeued) == 1 and requeued[0]["requeued_at"]
    # Requeued twice? Nothing is left parked for the job.
    assert (await gateway.client.post(f"/api/v1/admin/dlq/{job_id}/requeue")).status == 404

    # Purge, and the errors.
    assert (await gateway.client.delete(f"/api/v1/admin/dlq/{job_id}")).status == 200
    assert (await get(gateway, f"/api/v1/admin/dlq/{job_id}"))[0] == 404
    assert (await get(gateway, f"/api/v1/admin/dlq/{uuid.uuid4()}"))[0] == 404
    assert (await get(gateway, "/api/v1/admin/dlq/not-a-uuid"))[0] == 400
    for query in ("state=lost", "limit=0", "limit=x", "offset=-3", "limit=5000"):
        assert (await get(gateway, f"/api/v1/admin/dlq?{query}"))[0] == 400, query
    assert (await gateway.client.post("/api/v1/admin/dlq/not-a-uuid/requeue")).status == 400
    response = await gateway.client.post("/api/v1/admin/dlq/requeue", json={"all": True})
    assert response.status == 200 and (await response.json()) == {"requeued": 0}
    response = await gateway.client.delete("/api/v1/admin/dlq")
    assert response.status == 200 and (await response.json()) == {"purged": 0}


async def park(db: asyncpg.Connection, queue: str, count: int) -> list[uuid.UUID]:
    """`count` parked dead letters of `queue`, each of its own job; their job ids."""
    jobs = []
    for i in range(count):
        job = uuid.uuid4()
        await db.execute("INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'tester', 'r')", job)
        await db.execute(
            """INSERT INTO dead_letters (message_id, queue, routing_key, body, error, job_id)
               VALUES ($1, $2, 'media.ingested.v1', '\\x7b7d', 'boom', $3)""",
            f"m{i}-{job}",
            queue,
            job,
        )
        jobs.append(job)
    return jobs


async def test_requeue_all_answers_400_and_requeues_nothing_when_the_body_does_not_ask_for_all(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    queue = gateway.media_queue
    [job, _] = await park(db, queue, 2)
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, '{"all": true}'),  # no body at all
        ({"data": b"requeue everything!!"}, "JSON"),
        ({"data": b"\x00\xff garbage"}, "JSON"),
        ({"json": []}, "JSON object"),
        ({"json": {}}, '{"all": true}'),
        ({"json": {"all": False}}, '{"all": true}'),
        ({"json": {"all": "yes"}}, '{"all": true}'),
        ({"json": {"al": True}}, '{"all": true}'),
        ({"json": {"all": True, "everything": True}}, '{"all": true}'),
        ({"json": {"all": True, "queue": ""}}, '{"all": true}'),
    ]
    for kwargs, message in bad:
        response = await gateway.client.post("/api/v1/admin/dlq/requeue", **kwargs)
        assert response.status == 400, (kwargs, await response.text())
        body = await response.json()
        assert message in body["error"] and body["request_id"], (kwargs, body)
    unknown = await gateway.client.post(
        "/api/v1/admin/dlq/requeue", json={"all": True, "everything": True}
    )
    fields = [d["field"] for d in (await unknown.json())["details"]]
    assert fields == ["everything"]
    assert await db.fetchval("SELECT count(*) FROM dead_letters WHERE requeued_at IS NULL") == 2
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0

    # The per-job requeue takes no body, or {}; anything else is a 400 too.
    for kwargs in ({"json": {"all": True}}, {"data": b"garbage"}, {"json": [1]}):
        response = await gateway.client.post(f"/api/v1/admin/dlq/{job}/requeue", **kwargs)
        assert response.status == 400, kwargs
    response = await gateway.client.post(f"/api/v1/admin/dlq/{job}/requeue", json={})
    assert response.status == 200 and await response.json() == {"requeued": 1}

    # Asked for explicitly: everything of another queue (none), then everything.
    other = {"all": True, "queue": "elsewhere"}
    response = await gateway.client.post("/api/v1/admin/dlq/requeue", json=other)
    assert response.status == 200 and await response.json() == {"requeued": 0}
    mine = {"all": True, "queue": queue}
    response = await gateway.client.post("/api/v1/admin/dlq/requeue", json=mine)
    assert response.status == 200 and await response.json() == {"requeued": 1}
    assert await db.fetchval("SELECT count(*) FROM dead_letters WHERE requeued_at IS NULL") == 0


def corrupt_mp4() -> bytes:
    """An MP4 signature (the gateway takes it for a video) followed by noise."""
    return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 8


async def test_failure_records_name_the_content_not_the_storage_path_when_media_is_corrupt(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    storage_path: Path,
    db: asyncpg.Connection,
) -> None:
    corrupt_jpeg = make_jpeg(7, size=(200, 200))[:1500]
    ids = await upload(gateway, ("broken.jpg", corrupt_jpeg), ("broken.mp4", corrupt_mp4()))

    async def parked() -> bool:
        return len((await get(gateway, "/api/v1/admin/dlq"))[1]) == 2

    await wait_for(parked, what="both dead letters")
    root = str(storage_path.resolve())
    job_id = (await get(gateway, f"/api/v1/objects/{ids[0]}"))[1]["job_id"]
    status = (await get(gateway, f"/api/v1/ingest/{job_id}/status"))[1]
    letters = (await get(gateway, "/api/v1/admin/dlq"))[1]
    errors = [u["error"] for u in status["uploads"]] + [d["error"] for d in letters]
    errors += [(await get(gateway, f"/api/v1/objects/{i}"))[1]["error"] for i in ids]
    assert [u["status"] for u in status["uploads"]] == ["failed", "failed"]
    assert len(errors) == 6 and all("cannot decode" in e for e in errors), errors
    for error in errors:
        assert root not in error and str(storage_path) not in error, error
        assert "objects/" not in error, error  # not even the path inside the storage root
    # The video's decoder names its file: by the content's sha256.
    video = next(u for u in status["uploads"] if u["kind"] == "video")
    assert video["sha256"] in video["error"]


async def test_dlq_depth_counts_the_dead_letters_waiting_for_an_admin(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    """The recorder empties the broker's parking queues at once: what waits is in the table."""
    queue = gateway.media_queue

    async def depths() -> tuple[int, str]:
        health = await (await gateway.client.get("/health")).json()
        metrics = await (await gateway.client.get("/metrics")).text()
        line = next(m for m in metrics.splitlines() if m.startswith(f'dlq_depth{{queue="{queue}"'))
        return health["queues"][queue]["dlq_depth"], line.split()[-1]

    assert await depths() == (0, "0.0")
    [job, _, _] = await park(db, queue, 3)
    assert await depths() == (3, "3.0")
    assert (await gateway.client.post(f"/api/v1/admin/dlq/{job}/requeue")).status == 200
    assert await depths() == (2, "2.0")
    assert (await gateway.client.delete("/api/v1/admin/dlq")).status == 200
    assert await depths() == (0, "0.0")
