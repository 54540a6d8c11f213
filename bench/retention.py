#!/usr/bin/env python3
"""The retention job on N uploads (default 100,000): counting, listing and deleting what is due.

The deployment is made directly (rows only: retention never reads the store): N uploads of
N contents, uploaded evenly over the last 60 days, a tenth of them JSON in a collection
`logs`, owners `o0`..`o9`. The policy is RETENTION_DAYS=30 with `owner:o0=0` (kept forever)
and `collection:logs=7`. Timed, as `gateway.retention` runs them: the count by rule, the whole
listing page by page (1,000 a page), and the deletion (batches of one `uploads.deleted` event,
each its own transaction). Checks that the deletion removed exactly what was listed.

    .venv/bin/python bench/retention.py
    .venv/bin/python bench/retention.py --uploads 20000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdb import scratch_database

from common.db import open_pool
from gateway.repo.retention import count_due, list_due
from gateway.repo.scope import OwnerScope
from gateway.retention import Retention
from gateway.retention_policy import parse_rules
from gateway.settings import GatewaySettings

EVERYONE = OwnerScope(None)


async def fill(url: str, n: int, now: datetime) -> None:
    conn = await asyncpg.connect(url)
    try:
        jobs = [uuid.uuid4() for _ in range(n)]
        content = [uuid.uuid4() for _ in range(n)]
        json = [i % 10 == 9 for i in range(n)]
        await conn.copy_records_to_table(
            "jobs",
            records=[(j, f"o{i % 10}", "r", "logs" if json[i] else None)
                     for i, j in enumerate(jobs)],
            columns=["id", "owner", "request_id", "collection"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "content",
            records=[
                (c, f"{i:064x}", "json" if json[i] else "image",
                 "application/json" if json[i] else "image/png", 16,
                 None if json[i] else f"objects/{i:064x}", '{"n": 1}' if json[i] else None,
                 "stored" if json[i] else "clustered", j)
                for i, (c, j) in enumerate(zip(content, jobs, strict=True))
            ],
            columns=["id", "sha256", "kind", "mime_type", "size_bytes", "storage_key",
                     "document", "stage", "first_job_id"],
        )  # fmt: skip
        step = timedelta(days=60) / n
        await conn.copy_records_to_table(
            "uploads",
            records=[
                (uuid.uuid4(), j, c, f"o{i % 10}", 0, now - step * i)
                for i, (j, c) in enumerate(zip(jobs, content, strict=True))
            ],
            columns=["id", "job_id", "content_id", "owner", "position", "created_at"],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def run(n: int) -> None:
    policy = parse_rules(("owner:o0=0", "collection:logs=7"), 30)
    async with scratch_database("bench_retention") as url:
        now = datetime.now(UTC)
        await fill(url, n, now)
        settings = GatewaySettings(database_url=url, db_pool_size=2, db_max_overflow=2)
        async with open_pool(settings, min_size=2, max_size=4) as pool:
            async with pool.acquire() as conn:
                started = time.monotonic()
                due = await count_due(conn, policy, now, EVERYONE)
                took = time.monotonic() - started
                print(f"count:  {due.total} due of {n} in {took:6.2f} s  {due.by_rule}")
                listed: list[str] = []
                after = None
                started = time.monotonic()
                while page := await list_due(conn, policy, now, EVERYONE, after=after, limit=1000):
                    listed += [u["system_id"] for u in page]
                    after = uuid.UUID(page[-1]["system_id"])
                took = time.monotonic() - started
                print(
                    f"list:   {len(listed)} in {took:6.2f} s  {len(listed) / took:8.0f} uploads/s"
                )
                before = {str(r["id"]) for r in await conn.fetch("SELECT id FROM uploads")}
            started = time.monotonic()
            result = await Retention(pool, policy).run(apply=True, as_of=now)
            took = time.monotonic() - started
            assert result is not None
            deleted = len(result.deleted.upload_ids)
            print(f"delete: {deleted} in {took:6.2f} s  {deleted / took:8.0f} uploads/s")
            after_ids = {str(r["id"]) for r in await pool.fetch("SELECT id FROM uploads")}
            assert before - after_ids == set(listed) and deleted == len(listed) == due.total
            print("deleted exactly what was listed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(run(args.uploads))


if __name__ == "__main__":
    main()
