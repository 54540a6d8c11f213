#!/usr/bin/env python3
"""Deletes per second for N uploads (default 10,000): the gateway's part and the purge.

The deployment is made directly (as bench/backup.py does): N uploads of N distinct images,
each filed in one of N/100 clusters with an 8-d embedding, its stored object and thumbnail.
Then, timed:
  1. the gateway's deletes: `repo.deletion.delete_object` for every upload, --concurrency at a
     time (what `DELETE /api/v1/objects/{id}` runs, less HTTP): rows, event, audit;
  2. the clusterer's purge of every content (`clusterer.purge.purge`, as the uploads.deleted
     consumer runs it, --concurrency at a time): cluster sums and counts, rows, tombstones,
     bytes and thumbnails removed under their locks.
Prints each rate; checks that nothing is left; the database and folder are removed after.

    .venv/bin/python bench/delete.py
    .venv/bin/python bench/delete.py --uploads 2000 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup import fill, write_objects
from benchdb import scratch_database

from clusterer.purge import purge
from common.storage.filesystem import FileSystemStorage
from gateway.repo.deletion import delete_object
from gateway.repo.scope import OwnerScope

DIM = 8


@dataclass(frozen=True)
class PurgeDeps:
    pool: asyncpg.Pool
    storage: FileSystemStorage


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{v:.6f}" for v in vector) + "]"


async def file_in_clusters(conn: asyncpg.Connection, thumbnails: list[tuple[str, str]]) -> None:
    """A model, clusters of ~100 members with exact sums, embeddings and thumbnails."""
    await conn.execute("INSERT INTO models (id, dim) VALUES ('bench/delete', $1)", DIM)
    content = [r["id"] for r in await conn.fetch("SELECT id FROM content ORDER BY id")]
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(len(content), DIM)).astype(np.float32)
    clusters = [uuid.uuid4() for _ in range(max(1, len(content) // 100))]
    of = [clusters[i % len(clusters)] for i in range(len(content))]
    for n, cluster_id in enumerate(clusters):
        total = vectors[[i for i, c in enumerate(of) if c == cluster_id]].sum(axis=0)
        await conn.execute(
            """INSERT INTO clusters (id, model_id, name, centroid_sum, centroid, member_count)
               VALUES ($1, 'bench/delete', $2, $3::vector, l2_normalize($3::vector), $4)""",
            cluster_id,
            f"cluster-{n}",
            literal(total),
            sum(1 for c in of if c == cluster_id),
        )
    await conn.execute(
        """INSERT INTO embeddings (content_id, model_id, embedding)
           SELECT c, 'bench/delete', v::vector FROM unnest($1::uuid[], $2::text[]) AS t(c, v)""",
        content,
        [literal(v) for v in vectors],
    )
    await conn.executemany(
        "UPDATE content SET cluster_id = $2, thumbnail_key = $3 WHERE id = $1",
        [(c, cl, key) for c, cl, (_, key) in zip(content, of, thumbnails, strict=True)],
    )


async def run(n: int, concurrency: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mb-bench-delete-"))
    try:
        async with scratch_database("bench_delete") as url:
            store = work / "store"
            objects = write_objects(store, n, 2048)
            thumbnails = write_objects(store, n, 512)
            await fill(url, objects, 2048)
            conn = await asyncpg.connect(url)
            try:
                await file_in_clusters(conn, thumbnails)
                uploads = [r["id"] for r in await conn.fetch("SELECT id FROM uploads")]
                contents = [r["id"] for r in await conn.fetch("SELECT id FROM content")]
            finally:
                await conn.close()
            storage = FileSystemStorage(store)
            async with asyncpg.create_pool(url, min_size=concurrency, max_size=concurrency) as pool:
                queue = list(uploads)

                async def deleter() -> None:
                    async with pool.acquire() as conn:
                        while queue:
                            await delete_object(conn, OwnerScope(None), queue.pop(), "bench")

                started = time.monotonic()
                await asyncio.gather(*(deleter() for _ in range(concurrency)))
                took = time.monotonic() - started
                print(f"gateway deletes: {n} in {took:6.1f} s  {n / took:7.0f} uploads/s")

                deps = PurgeDeps(pool, storage)
                todo = list(contents)

                async def purger() -> None:
                    while todo:
                        await purge(deps, todo.pop(), "bench")  # type: ignore[arg-type]

                started = time.monotonic()
                await asyncio.gather(*(purger() for _ in range(concurrency)))
                took = time.monotonic() - started
                print(f"purges:          {n} in {took:6.1f} s  {n / took:7.0f} contents/s")
                left = await pool.fetchval(
                    "SELECT (SELECT count(*) FROM content) + (SELECT count(*) FROM uploads)"
                    " + (SELECT count(*) FROM embeddings) + (SELECT count(*) FROM clusters)"
                )
                files = sum(1 for p in (store / "objects").rglob("*") if p.is_file())
                assert left == 0 and files == 0, (left, files)
                print("nothing left: no row, vector, cluster or object")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.uploads, args.concurrency))


if __name__ == "__main__":
    main()
