#!/usr/bin/env python3
"""Backup and restore time for a deployment of N uploads (default 100,000).

The deployment is made directly, not through the pipeline (that would take the benchmark
hours): N uploads of N distinct images, each one job, one upload and one content row at stage
`clustered` with its stored object (--object-bytes of random bytes, a real sha256 and key),
written into a scratch database and store. Then, timed: `gateway.backup.create` (pg_dump from
the exported snapshot plus the object copy), `restore` into a second, empty database and store
(pg_restore, objects placed, migrations, resume), and `verify` of the restored store. Prints
each time, uploads/s and MB/s; the databases are dropped and the folders removed at the end.

    .venv/bin/python bench/backup.py                     # 100,000 uploads
    .venv/bin/python bench/backup.py --uploads 10000 --object-bytes 4096
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdb import scratch_database

from common.storage import key_for
from gateway.backup import create, restore, verify
from gateway.settings import GatewaySettings


def write_objects(root: Path, n: int, size: int) -> list[tuple[str, str]]:
    """N distinct objects in a store; (sha256, key) of each."""
    made = []
    for i in range(n):
        data = i.to_bytes(8, "big") + os.urandom(size - 8)
        sha = hashlib.sha256(data).hexdigest()
        key = key_for(sha)
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        made.append((sha, key))
    return made


async def fill(url: str, objects: list[tuple[str, str]], size: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        jobs = [uuid.uuid4() for _ in objects]
        content = [uuid.uuid4() for _ in objects]
        await conn.copy_records_to_table(
            "jobs", records=[(j, "bench", "r") for j in jobs], columns=["id", "owner", "request_id"]
        )
        await conn.copy_records_to_table(
            "content",
            records=[
                (c, sha, "image", "image/png", size, key, "clustered", j)
                for c, (sha, key), j in zip(content, objects, jobs, strict=True)
            ],
            columns=["id", "sha256", "kind", "mime_type", "size_bytes", "storage_key", "stage",
                     "first_job_id"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "uploads",
            records=[(uuid.uuid4(), j, c, "bench", 0) for j, c in zip(jobs, content, strict=True)],
            columns=["id", "job_id", "content_id", "owner", "position"],
        )
    finally:
        await conn.close()


async def run(n: int, size: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mb-bench-backup-"))
    try:
        async with (
            scratch_database("bench_backup_src") as source_url,
            scratch_database("bench_backup_dst", migrated=False) as target_url,
        ):
            store = work / "source"
            started = time.monotonic()
            objects = write_objects(store, n, size)
            await fill(source_url, objects, size)
            print(
                f"made {n} uploads ({n * size / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s"
            )
            source = GatewaySettings(database_url=source_url, storage_path=store)
            target = GatewaySettings(database_url=target_url, storage_path=work / "target")
            megabytes = n * size / 1e6

            started = time.monotonic()
            path, manifest = await create(source, work / "backups")
            took = time.monotonic() - started
            dump = (path / "database.dump").stat().st_size / 1e6
            print(f"backup:  {took:6.1f} s  {n / took:8.0f} uploads/s  {megabytes / took:6.1f} MB/s"
                  f"  (dump {dump:.1f} MB, {manifest.objects} objects)")  # fmt: skip

            started = time.monotonic()
            _, resumed = await restore(target, path)
            took = time.monotonic() - started
            print(f"restore: {took:6.1f} s  {n / took:8.0f} uploads/s  {megabytes / took:6.1f} MB/s"
                  f"  (resumed {resumed})")  # fmt: skip

            started = time.monotonic()
            report = await verify(target)
            took = time.monotonic() - started
            assert report.consistent and not report.objects_without_rows
            print(f"verify:  {took:6.1f} s  {n / took:8.0f} objects/s  consistent")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=100_000)
    parser.add_argument("--object-bytes", type=int, default=2048)
    args = parser.parse_args()
    asyncio.run(run(args.uploads, args.object_bytes))


if __name__ == "__main__":
    main()
