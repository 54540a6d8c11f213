"""Each document exactly once: a schemer killed mid-approval, and two schemers at once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import BusNames, service_env
from tests.integration.conftest import Gateway
from tests.schemer.conftest import ingest, schema_of, wait_for, wait_job

pytestmark = pytest.mark.slow


def readings(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"reading": i, "sensor": f"s-{i % 13}", "value": i * 0.5, "at": "2024-01-01T00:00:00Z"}
        for i in range(start, start + count)
    ]


async def placed(db: asyncpg.Connection, placement: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM json_documents WHERE placement = $1", placement
    )
    return count


async def assert_each_once(db: asyncpg.Connection, collection_id: uuid.UUID, total: int) -> None:
    table = await db.fetchval(
        "SELECT table_name FROM json_collections WHERE id = $1", collection_id
    )
    rows = await db.fetchrow(
        f"""SELECT count(*) AS n, count(DISTINCT _upload_id) AS uploads,
                   count(DISTINCT reading) AS readings
            FROM collections."{table}" """
    )
    assert (rows["n"], rows["uploads"], rows["readings"]) == (total, total, total)
    documents = await db.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT row_id) AS rows,
                  count(*) FILTER (WHERE placement = 'table') AS in_table
           FROM json_documents WHERE collection_id = $1""",
        collection_id,
    )
    assert (documents["n"], documents["rows"], documents["in_table"]) == (total, total, total)
    assert (
        await db.fetchval(
            "SELECT document_count FROM json_collections WHERE id = $1", collection_id
        )
        == total
    )


async def test_approval_leaves_each_document_once_when_the_schemer_is_killed_mid_way(
    gateway: Gateway,
    db: asyncpg.Connection,
    database_url: str,
    bus_names: BusNames,
    storage_path: Path,
) -> None:
    env = service_env(
        database_url,
        bus_names,
        storage_path,
        SCHEMER_APPROVAL_BATCH="100",
        WORKER_HTTP_PORT="0",
        LOG_LEVEL="WARNING",
    )
    total = 5000
    schemer = subprocess.Popen([sys.executable, "-m", "schemer"], env=env)
    try:
        jobs = [
            await ingest(gateway, readings(start, 1000), owner="lab", collection="readings")
            for start in range(0, total, 1000)
        ]
        for job in jobs:
            assert (await wait_job(gateway, job["job_id"], timeout=60))["status"] == "done"
        assert await placed(db, "staged") == total
        collection_id = await db.fetchval("SELECT id FROM json_collections")
        response = await gateway.client.post(f"/api/v1/schemas/{collection_id}/approve")
        assert response.status == 202
        # Kill it without warning once part of the documents have moved into the table.
        await wait_for(lambda: placed(db, "table"), timeout=60, what="the first batch moved")
        schemer.send_signal(signal.SIGKILL)
        schemer.wait()
        moved = await placed(db, "table")
        assert 0 < moved < total, f"{moved} moved: the kill came too late to prove anything"
        schemer = subprocess.Popen([sys.executable, "-m", "schemer"], env=env)

        async def approved() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT status = 'approved' FROM json_collections WHERE id = $1",
                    collection_id,
                )
            )

        await wait_for(approved, timeout=90, what="approval finished after the restart")
    finally:
        schemer.terminate()
        schemer.wait()
    await assert_each_once(db, collection_id, total)


async def test_two_schemers_open_one_collection_and_one_table_when_consuming_together(
    gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    total = 0
    async with start_schemer(), start_schemer():
        jobs = []
        for start in range(0, 1200, 30):  # 40 requests of the same shape, nobody names one
            jobs.append(await ingest(gateway, readings(start, 30), owner="lab"))
            total += 30
        for job in jobs:
            assert (await wait_job(gateway, job["job_id"], timeout=60))["status"] == "done"
        [collection_id] = [r["id"] for r in await db.fetch("SELECT id FROM json_collections")]
        assert await placed(db, "staged") == total
        # Approved twice at once: each schemer may take one of the two commands.
        first, second = await asyncio.gather(
            gateway.client.post(f"/api/v1/schemas/{collection_id}/approve"),
            gateway.client.post(f"/api/v1/schemas/{collection_id}/approve"),
        )
        assert {first.status, second.status} <= {202, 409}
        await decide_wait(gateway, str(collection_id))
        # More documents while two schemers write into the table.
        more = [await ingest(gateway, readings(5000 + n * 50, 50), owner="lab") for n in range(6)]
        for job in more:
            assert (await wait_job(gateway, job["job_id"], timeout=60))["status"] == "done"
        total += 300
    tables = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'collections'")
    assert len(tables) == 1
    await assert_each_once(db, collection_id, total)


async def decide_wait(gateway: Gateway, collection_id: str) -> None:
    async def approved() -> bool:
        return bool((await schema_of(gateway, collection_id))["status"] == "approved")

    await wait_for(approved, timeout=60, what="approved")
