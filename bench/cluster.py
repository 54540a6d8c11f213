#!/usr/bin/env python3
"""Clusterer: assignment latency against 100 / 1,000 / 10,000 clusters, and clustering quality.

Latency runs the clusterer's own assignment code (nearest centroid through the model's HNSW
index, the atomic join, the content's stage CAS, the audit row; one commit each) against a
fresh database (PostgreSQL + pgvector: DATABASE_URL, or the local one scripts/localdb.py
starts). Quality files labelled embeddings one by one through the same code and compares the
clusters with scikit-learn's HDBSCAN on the same vectors (adjusted Rand index against the true
kinds): synthetic kinds, and scikit-image's real photos through EfficientNet-Lite2.

    .venv/bin/python bench/cluster.py
    .venv/bin/python bench/cluster.py --sizes 100 1000 --queries 200 --skip-photos
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import cast

import asyncpg
import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score

ROOT = Path(__file__).resolve().parent.parent
# bench/embedder.py would shadow the embedder package: look in the repository, not in bench/.
sys.path[0] = str(ROOT)

from bench.benchdb import scratch_database
from clusterer import reclustering, repo
from clusterer.handlers import ClustererDeps, ModelCache, _assign
from clusterer.settings import ClustererSettings
from common.calibration import Calibration
from common.db import open_pool
from common.settings import CommonSettings
from common.vectors import register_model
from mammoth_export.sample_photos import calibrate_threshold

DIM = 512


class NoLabels:
    """Placeholder names are not what is measured here (the text RPC is the embedder's)."""

    async def label(self, model_id: str, embedding: NDArray[np.float32]) -> str | None:
        return None


def unit(rows: NDArray[np.float64]) -> NDArray[np.float32]:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def kinds(
    count: int, per_kind: int, spread: float, seed: int
) -> tuple[NDArray[np.float32], list[int]]:
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(count, DIM)))
    labels = [k for k in range(count) for _ in range(per_kind)]
    rng.shuffle(labels)
    noise = rng.normal(scale=spread / np.sqrt(DIM), size=(len(labels), DIM))
    return unit(centres[labels] + noise), labels


def text(vector: NDArray[np.float32]) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in vector) + "]"


async def add_content(pool: asyncpg.Pool, count: int) -> list[uuid.UUID]:
    """Content rows waiting in `embedded`, for the assignment's stage CAS."""
    ids = [uuid.uuid4() for _ in range(count)]
    job = uuid.uuid4()
    await pool.execute(
        "INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'bench', 'bench')", job
    )
    await pool.executemany(
        """INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key, stage,
                                first_job_id)
           VALUES ($1, $2, 'image', 'image/png', 1, 'objects/x', 'embedded', $3)""",
        [(i, uuid.uuid4().hex * 2, job) for i in ids],
    )
    return ids


async def file_all(
    deps: ClustererDeps, model: repo.Model, vectors: NDArray[np.float32]
) -> tuple[list[uuid.UUID], list[float], list[str]]:
    """File each vector as new content, one after another; (content ids, seconds, outcomes)."""
    ids = await add_content(deps.pool, len(vectors))
    times, outcomes = [], []
    for content_id, vector in zip(ids, vectors, strict=True):
        start = time.perf_counter()
        outcomes.append(await _assign(deps, model, content_id, vector))
        times.append(time.perf_counter() - start)
    return ids, times, outcomes


async def clusters_of(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    rows = await pool.fetch("SELECT id, cluster_id FROM content WHERE id = ANY($1::uuid[])", ids)
    found = {r["id"]: r["cluster_id"] for r in rows}
    return [found[i] for i in ids]


def ms(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def latency(deps: ClustererDeps, sizes: list[int], queries: int) -> None:
    print("\n== assignment latency (one content filed per call, sequential, one commit each)")
    print(f"{'clusters':>9} {'path':>22} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}  outcome")
    rng = np.random.default_rng(7)
    for size in sizes:
        model_id = f"bench/latency-{size}"
        centres = unit(rng.normal(size=(size, DIM)))
        cluster_ids = [uuid.uuid4() for _ in range(size)]
        # Half the clusters are established (10-100 members), half hold one member so far.
        half = size // 2
        counts = [int(n) for n in rng.integers(10, 101, half)] + [1] * (size - half)
        # Rows first, then the model's indexes (built in bulk by register_model).
        await deps.pool.execute("INSERT INTO models (id, dim) VALUES ($1, $2)", model_id, DIM)
        await deps.pool.executemany(
            """INSERT INTO clusters (id, model_id, name, threshold, centroid_sum, centroid,
                                     member_count)
               VALUES ($1, $2, $3, 0.72, $4::text::vector, $5::text::vector, $6)""",
            [
                (cid, model_id, f"{model_id} {i}", text(c * n), text(c), n)
                for i, (cid, c, n) in enumerate(zip(cluster_ids, centres, counts, strict=True))
            ],
        )
        async with deps.pool.acquire() as conn:
            await register_model(conn, model_id, DIM)
        await deps.pool.execute("ANALYZE clusters")
        model = repo.Model(model_id, DIM, Calibration.flat(0.72))
        count = min(queries, size - half)
        scenarios = (
            ("join, 10-100 members", rng.integers(0, half, count + 20)),
            # Each singleton joined once: its direction moves a lot, so the search key is
            # re-indexed on every join (the worst case).
            ("join, 1 member", half + rng.permutation(size - half)[: count + 20]),
        )
        for label, targets in scenarios:
            # Newcomers near an existing centre (cosine ~0.9 to it).
            noise = rng.normal(scale=0.5 / np.sqrt(DIM), size=(len(targets), DIM))
            near = unit(centres[targets] + noise)
            await file_all(deps, model, near[:20])  # warm the index pages and the plans
            ids, times, outcomes = await file_all(deps, model, near[20:])
            chosen = await clusters_of(deps.pool, ids)
            right = sum(c == cluster_ids[t] for c, t in zip(chosen, targets[20:], strict=True))
            print(
                f"{size:>9} {label:>22} {len(times):>5} {ms(times, 50):>8.2f}"
                f" {ms(times, 95):>8.2f}  {outcomes.count('joined')} joined,"
                f" {right} to the centre they came from"
            )
        # Newcomers like nothing stored: the serialised create path (exact look under the lock).
        fresh = unit(rng.normal(size=(50, DIM)))
        _, times, outcomes = await file_all(deps, model, fresh)
        print(
            f"{size:>9} {'create':>22} {len(times):>5} {ms(times, 50):>8.2f}"
            f" {ms(times, 95):>8.2f}  {outcomes.count('created')} created"
        )


async def recluster(pool: asyncpg.Pool, sizes: list[int]) -> None:
    """A re-clustering run (clusterer/reclustering.run_model: read, propose, record) over
    `size` embeddings of 512-d in clusters of ~10, pieces of kinds of ~50 (so: merges)."""
    print("\n== re-clustering run (read every filed embedding, cluster by regions, record)")
    print(
        f"{'items':>8} {'clusters':>9} {'regions':>8} {'proposed':>9} {'seconds':>8}"
        f" {'max RSS MB':>11}"
    )
    rng = np.random.default_rng(5)
    job_id = uuid.uuid4()
    await pool.execute("INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'bench', 'r')", job_id)
    for size in sizes:
        model_id = f"bench/recluster-{size}"
        await pool.execute("INSERT INTO models (id, dim) VALUES ($1, $2)", model_id, DIM)
        kinds_n = max(size // 50, 2)
        centres = unit(rng.normal(size=(kinds_n, DIM)))
        labels = rng.integers(0, kinds_n, size)
        vectors = unit(centres[labels] + rng.normal(scale=1.0 / np.sqrt(DIM), size=(size, DIM)))
        pieces = labels * 5 + rng.integers(0, 5, size)  # each kind in five clusters
        cluster_ids = {int(p): uuid.uuid4() for p in np.unique(pieces)}
        sums: dict[int, NDArray[np.float64]] = {}
        for p, v in zip(pieces, vectors, strict=True):
            sums[int(p)] = sums.get(int(p), 0) + v.astype(np.float64)
        counts = {
            int(p): int(n) for p, n in zip(*np.unique(pieces, return_counts=True), strict=True)
        }
        await pool.executemany(
            """INSERT INTO clusters (id, model_id, name, centroid_sum, centroid, member_count)
               VALUES ($1, $2, $3, $4::text::vector, $5::text::vector, $6)""",
            [
                (
                    cid,
                    model_id,
                    f"{model_id} {p}",
                    text(sums[p].astype(np.float32)),
                    text((sums[p] / np.linalg.norm(sums[p])).astype(np.float32)),
                    counts[p],
                )
                for p, cid in cluster_ids.items()
            ],
        )
        contents = [uuid.uuid4() for _ in range(size)]
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(
                "content",
                columns=[
                    "id",
                    "sha256",
                    "kind",
                    "mime_type",
                    "size_bytes",
                    "storage_key",
                    "stage",
                    "first_job_id",
                    "cluster_id",
                ],
                records=[
                    (
                        c,
                        uuid.uuid4().hex * 2,
                        "image",
                        "image/png",
                        1,
                        f"media/x/{c}",
                        "clustered",
                        job_id,
                        cluster_ids[int(p)],
                    )
                    for c, p in zip(contents, pieces, strict=True)
                ],
            )
            await conn.copy_records_to_table(
                "embeddings",
                columns=["content_id", "model_id", "embedding"],
                records=[(c, model_id, v) for c, v in zip(contents, vectors, strict=True)],
            )
        settings = ClustererSettings(
            database_url="postgresql://unused", cluster_recluster_interval_s=0
        )
        deps = cast(
            ClustererDeps,
            type(
                "Deps", (), {"pool": pool, "settings": settings, "models": ModelCache(settings)}
            )(),
        )
        start = time.perf_counter()
        run_id = await reclustering.run_model(deps, model_id, "bench")
        seconds = time.perf_counter() - start
        run = await pool.fetchrow("SELECT * FROM recluster_runs WHERE id = $1", run_id)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{run['items']:>8} {run['clusters']:>9} {run['regions']:>8} {run['proposed']:>9}"
            f" {seconds:>8.1f} {rss:>11.0f}"
        )


async def quality(
    deps: ClustererDeps,
    name: str,
    vectors: NDArray[np.float32],
    labels: list[int],
    threshold: float,
    min_cluster_size: int,
) -> None:
    model_id = f"bench/quality-{uuid.uuid4().hex[:8]}"
    async with deps.pool.acquire() as conn:
        await register_model(conn, model_id, vectors.shape[1])
    ids, _, _ = await file_all(
        deps, repo.Model(model_id, vectors.shape[1], Calibration.flat(threshold)), vectors
    )
    online = [str(c) for c in await clusters_of(deps.pool, ids)]
    found = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(vectors)
    # HDBSCAN's noise (-1) counts as one singleton cluster per point.
    hdb = np.where(found < 0, -1 - np.arange(len(found)), found)
    print(
        f"{name:<40} {len(vectors):>5} {len(set(labels)):>5} {len(set(online)):>7}"
        f" {len(set(hdb)):>7} {adjusted_rand_score(labels, online):>7.3f}"
        f" {adjusted_rand_score(labels, hdb):>7.3f} {adjusted_rand_score(online, hdb):>9.3f}"
    )


def photo_vectors(model_dir: Path | None) -> tuple[NDArray[np.float32], list[int], float]:
    from embedder.model import OnnxModel
    from embedder.preprocess import batch, to_model_input
    from mammoth_export.sample_photos import kind_photos

    if model_dir is None:
        from mammoth_export.efficientnet import export_image_encoder

        model_dir = Path(tempfile.mkdtemp(prefix="mb-lite2-")) / "efficientnet-lite2"
        export_image_encoder(model_dir, fp16=False, int8=False)
    model = OnnxModel(model_dir, providers=("cpu",), threads=2)
    photos = kind_photos()
    pixels = batch([to_model_input(image, model.manifest.preprocess) for _, image in photos])
    kinds_seen = {k: i for i, k in enumerate(dict.fromkeys(k for k, _ in photos))}
    threshold = model.manifest.cluster_threshold or 0.72
    return model.embed_images(pixels), [kinds_seen[k] for k, _ in photos], threshold


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--model-dir", type=Path, help="an exported efficientnet-lite2 folder")
    parser.add_argument("--skip-photos", action="store_true")
    parser.add_argument(
        "--recluster", type=int, nargs="*", default=[10_000, 100_000], help="run sizes"
    )
    parser.add_argument("--only-recluster", action="store_true")
    args = parser.parse_args()
    async with scratch_database("mb_bench_cluster") as url:
        settings = CommonSettings(database_url=url, db_pool_size=2)
        async with open_pool(settings) as pool:
            deps = cast(ClustererDeps, type("Deps", (), {"pool": pool, "labeler": NoLabels()})())
            server = await pool.fetchval("SHOW server_version")
            pgvector = await pool.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            )
            print(f"PostgreSQL {server}, pgvector {pgvector}")
            await recluster(pool, args.recluster)
            if args.only_recluster:
                return
            await latency(deps, args.sizes, args.queries)
            print("\n== clustering quality: online assignment vs HDBSCAN (adjusted Rand index)")
            print(
                f"{'data':<40} {'n':>5} {'kinds':>5} {'online':>7} {'hdbscan':>7}"
                f" {'ARI on':>7} {'ARI hdb':>7} {'on vs hdb':>9}"
            )
            for spread in (0.5, 0.7, 0.9):
                vectors, labels = kinds(20, 50, spread, seed=11)
                # At the CLIP default, and at a threshold calibrated on these kinds the way
                # EfficientNet-Lite2's was (the middle of the gap between kinds).
                calibrated = round(calibrate_threshold(vectors, [str(k) for k in labels])[0], 2)
                for threshold in (0.72, calibrated):
                    name = f"synthetic 20x50, spread {spread}, t {threshold}"
                    await quality(deps, name, vectors, labels, threshold, 5)
            if not args.skip_photos:
                vectors, labels, threshold = photo_vectors(args.model_dir)
                await quality(
                    deps,
                    f"real photos, EfficientNet-Lite2, t {threshold}",
                    vectors,
                    labels,
                    threshold,
                    2,
                )


if __name__ == "__main__":
    asyncio.run(main())
