#!/usr/bin/env python3
"""Search: latency, throughput and recall@10 of the gateway's search query on 100,000 vectors.

Data with the structure real embeddings have: 1,000 Gaussian clusters on the 512-d unit
sphere (uniform random vectors are HNSW's worst case and say nothing about real data), 10
owners, a few tags. Queries are fresh points drawn like the data. Each kind of query — no
filter, an owner filter, a tag filter — runs through `gateway.search.nearest` (the HNSW index
with pgvector's iterative scan) at concurrency 1 and 16; recall@10 is measured against exact
search (NumPy, brute force) in the same run, and the query plan of each kind is printed.

    .venv/bin/python bench/search.py                  # 100,000 vectors
    .venv/bin/python bench/search.py --rows 20000 --queries 100
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from bench.benchdb import scratch_database
from common.db import open_pool
from common.settings import CommonSettings
from common.vectors import register_model
from gateway.repo.search import SEARCH_SETTINGS, nearest, search_query
from gateway.search_query import SearchRequest

DIM = 512
MODEL = "bench/search-512"
OWNERS = [f"owner{i}" for i in range(10)]
TAGS = ["cat", "dog", "car", "tree", "food", "text"]


def unit(rows: NDArray[np.float64]) -> NDArray[np.float32]:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def dataset(
    rows: int, clusters: int, seed: int = 0
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(clusters, DIM)))
    labels = rng.integers(0, clusters, rows)
    # Members at cosine ~0.8 to their centre, like photos of one kind.
    vectors = unit(centres[labels] + rng.normal(scale=0.75 / np.sqrt(DIM), size=(rows, DIM)))
    return vectors, labels


async def load(
    pool: asyncpg.Pool, vectors: NDArray[np.float32], rng: np.random.Generator
) -> tuple[list[uuid.UUID], NDArray[np.int64], list[list[str]]]:
    ids = [uuid.uuid4() for _ in range(len(vectors))]
    owners = rng.integers(0, len(OWNERS), len(vectors))
    tags = [[TAGS[i] for i in rng.choice(len(TAGS), 2, replace=False)] for _ in ids]
    job = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'bench', 'bench')", job
        )
        await conn.execute("INSERT INTO models (id, dim) VALUES ($1, $2)", MODEL, DIM)
        await conn.copy_records_to_table(
            "content",
            columns=["id", "sha256", "kind", "mime_type", "size_bytes", "storage_key", "stage",
                     "first_job_id", "tags", "thumbnail_key"],
            records=[
                (i, uuid.uuid4().hex * 2, "image", "image/jpeg", 1, "objects/x", "clustered",
                 job, t, "objects/t")
                for i, t in zip(ids, tags, strict=True)
            ],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "uploads",
            columns=["id", "job_id", "content_id", "owner", "filename", "position"],
            records=[
                (uuid.uuid4(), job, i, OWNERS[o], f"{n}.jpg", n)
                for n, (i, o) in enumerate(zip(ids, owners, strict=True))
            ],
        )
        await conn.copy_records_to_table(
            "embeddings",
            columns=["content_id", "model_id", "embedding"],
            records=[(i, MODEL, v) for i, v in zip(ids, vectors, strict=True)],
        )
        start = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await register_model(conn, MODEL, DIM)  # builds the model's HNSW index
        print(f"HNSW index built over {len(ids)} vectors in {time.perf_counter() - start:.1f} s")
        await conn.execute("ANALYZE")
    return ids, owners, tags


def exact(
    vectors: NDArray[np.float32], query: NDArray[np.float32], mask: NDArray[np.bool_] | None, k: int
) -> list[int]:
    sims = vectors @ query
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
    top = np.argpartition(-sims, k)[:k]
    return [int(i) for i in top[np.argsort(-sims[top])]]


async def run_kind(
    pool: asyncpg.Pool,
    name: str,
    queries: NDArray[np.float32],
    request: SearchRequest,
    truth: list[set[uuid.UUID]],
    concurrency: int,
) -> None:
    latencies: list[float] = []
    recalls: list[float] = []
    next_query = 0

    async def worker() -> None:
        nonlocal next_query
        while next_query < len(queries):
            i = next_query
            next_query += 1
            async with pool.acquire() as conn:
                start = time.perf_counter()
                hits = await nearest(conn, MODEL, DIM, queries[i], request, None)
                latencies.append(time.perf_counter() - start)
            got = {h.content_id for h in hits[:10]}
            recalls.append(len(got & truth[i]) / len(truth[i]))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"{name:<14} {concurrency:>4} {len(latencies):>6} {q[49] * 1000:>8.2f} {q[94] * 1000:>8.2f}"
        f" {len(latencies) / wall:>8.1f} {statistics.mean(recalls):>10.3f}"
    )


async def explain(pool: asyncpg.Pool, query: NDArray[np.float32], request: SearchRequest) -> None:
    """The plan the search statement gets, under the search transaction's settings."""
    sql, args = search_query(MODEL, DIM, query, request, None)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(SEARCH_SETTINGS)
        for row in await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql, *args):
            print("    " + row[0][:140])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    async with scratch_database("mb_bench_search") as url:
        settings = CommonSettings(database_url=url, db_pool_size=16, db_max_overflow=0)
        async with open_pool(settings, command_timeout=600) as pool:
            rng = np.random.default_rng(1)
            vectors, _ = dataset(args.rows, args.clusters)
            start = time.perf_counter()
            ids, owners, tags = await load(pool, vectors, rng)
            print(f"loaded {len(ids)} rows in {time.perf_counter() - start:.1f} s")
            server = await pool.fetchval("SHOW server_version")
            pgvector = await pool.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            )
            print(f"PostgreSQL {server}, pgvector {pgvector}; search: ef_search 100,")
            print("iterative scan relaxed_order; 2 cores shared by PostgreSQL and this client")
            queries, _ = dataset(args.queries, args.clusters)  # same centres (seed 0), new points
            queries = unit(queries + rng.normal(scale=0.3 / np.sqrt(DIM), size=queries.shape))
            owner_mask = owners == 3
            tag_mask = np.array(["cat" in t for t in tags])
            kinds = {
                "no filter": (SearchRequest(query="q", limit=10, threshold=-1), None),
                "owner filter": (
                    SearchRequest(query="q", limit=10, threshold=-1, owner=OWNERS[3]),
                    owner_mask,
                ),
                "tag filter": (
                    SearchRequest(query="q", limit=10, threshold=-1, tags=["cat"]),
                    tag_mask,
                ),
            }
            header = f"{'query':<14} {'conc':>4} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'q/s':>8}"
            print(f"\n{header} {'recall@10':>10}")
            for name, (request, mask) in kinds.items():
                truth = [{ids[i] for i in exact(vectors, q, mask, 10)} for q in queries]
                for concurrency in (1, 16):
                    await run_kind(pool, name, queries, request, truth, concurrency)
            print("\nquery plans:")
            for name, (request, _) in kinds.items():
                print(f"  {name}:")
                await explain(pool, queries[0], request)


if __name__ == "__main__":
    asyncio.run(main())
