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
from embedder.colour_model import COLOURS
from embedder.settings import EmbedderSettings
from tests.clusterer.conftest import colour_png, wait_for
from tests.clusterer.test_pipeline import upload
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
            return (await get(gateway, f"/api/v1/ingest/{job_id}/status"))[1]["status"] == "done"

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
    response = await gateway.client.post("/api/v1/admin/dlq/requeue")
    assert response.status == 200 and (await response.json()) == {"requeued": 0}
    response = await gateway.client.delete("/api/v1/admin/dlq")
    assert response.status == 200 and (await response.json()) == {"purged": 0}
