"""Workers on S3 when the store goes away: their messages wait for it, none is parked.

The embedder reaches S3 through the fault proxy (tests/storage/s3fault.py); the gateway
reaches it directly, so uploads are stored while the embedder cannot read them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from embedder.app import running
from embedder.handlers import EmbedderDeps
from embedder.settings import EmbedderSettings
from tests.conftest import make_jpeg
from tests.embedder.conftest import embedder_settings, tiny_clip_dir  # noqa: F401
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form
from tests.observability.harness import wait_until
from tests.storage.s3fault import S3Faults


@pytest.fixture
def storage_backend() -> str:
    return "s3"


@pytest.fixture
async def embedder_behind_faults(
    embedder_settings: Callable[..., EmbedderSettings],  # noqa: F811
    faults: S3Faults,
) -> AsyncIterator[EmbedderDeps]:
    endpoint = f"http://127.0.0.1:{faults.port}"
    async with running(embedder_settings(s3_endpoint_url=endpoint, s3_max_attempts=1)) as deps:
        await deps.bus.wait_connected(10)
        yield deps


async def test_an_embedder_that_cannot_reach_the_store_holds_its_work_until_it_is_back(
    gateway: Gateway,
    faults: S3Faults,
    embedder_behind_faults: EmbedderDeps,
    db: asyncpg.Connection,
) -> None:
    faults.down = True
    response = await gateway.client.post("/api/v1/ingest", data=form(("a.jpg", make_jpeg(5))))
    assert response.status == 202
    [upload] = (await response.json())["system_ids"]

    async def stage() -> Any:
        return await db.fetchval(
            "SELECT c.stage FROM uploads u JOIN content c ON c.id = u.content_id WHERE u.id = $1",
            uuid.UUID(upload),
        )

    # The retry tiers of the tests are 0.05 s and 0.1 s: an ordinary failure would be
    # parked long before these refusals stop.
    await wait_until(lambda: faults.failed >= 4, timeout=30, what="the embedder to try")
    assert await stage() == "ingested"
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    faults.down = False
    await wait_until(
        lambda: _is(stage(), "embedded", "clustered"), timeout=60, what="the embedding"
    )
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0


async def _is(value: Any, *wanted: str) -> bool:
    return await value in wanted
