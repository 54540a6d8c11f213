"""Two clusterer processes, 200 embedded images of 5 kinds at once: exactly one cluster per kind."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import numpy as np
import orjson
import pytest

from clusterer.logic import link_name, thumbnail_name
from clusterer.repo import SEARCH_KEY_DRIFT
from common.messages import MediaEmbedded
from common.storage.filesystem import FileSystemStorage
from common.topology import spec_of
from tests.clusterer.conftest import (
    consumers_on,
    folder_snapshot,
    kinds,
    seed_embedded,
    wait_for,
)
from tests.conftest import BusNames, service_env

MODEL = "test/kinds-64"


@pytest.fixture
def clusterer_env(database_url: str, bus_names: BusNames, storage_path: Path) -> dict[str, str]:
    return service_env(
        database_url,
        bus_names,
        storage_path,
        BUS_RETRY_DELAYS="0.05,0.1,0.2",
        WORKER_HTTP_PORT="0",
        WORKER_THREADS="8",
        LABEL_TIMEOUT_S="0.2",  # no embedder here: placeholders are "untitled ..."
        LOG_LEVEL="WARNING",
    )


@pytest.fixture
def processes(
    clusterer_env: dict[str, str], tmp_path: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    logs = [open(tmp_path / f"clusterer-{i}.log", "wb") for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "clusterer"], env=clusterer_env, stdout=log, stderr=log
        )
        for log in logs
    ]
    yield procs
    for proc in procs:
        proc.terminate()
    for proc, log in zip(procs, logs, strict=True):
        proc.wait(timeout=10)
        log.close()


def rebuild(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clusterer", "rebuild-folders", "--from-scratch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "rebuilt the folders of 5 clusters" in result.stdout


async def test_two_clusterers_open_exactly_one_cluster_per_kind_when_200_images_arrive_at_once(
    processes: list[subprocess.Popen[bytes]],
    clusterer_env: dict[str, str],
    db: asyncpg.Connection,
    storage_path: Path,
    bus_names: BusNames,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    storage = FileSystemStorage(storage_path, fsync=False)
    vectors, labels = kinds(5, 40, dim=64, spread=0.5, seed=3)
    seeded = await seed_embedded(
        db, storage, MODEL, vectors, labels, uploads_per_content=lambda i: 2 if i % 10 == 0 else 1
    )
    queue = spec_of(bus_names.specs, "clusterer", MediaEmbedded.routing_key).name
    channel = await amqp.channel()

    await wait_for(consumers_on(amqp, queue, 2), what="two clusterers consuming", timeout=60)
    exchange = await channel.get_exchange(bus_names.exchange)
    events = [
        MediaEmbedded(content_id=s.content_id, job_id=s.content_id, kind="image", model_id=MODEL)
        for s in seeded
    ]
    await asyncio.gather(
        *(
            exchange.publish(
                aio_pika.Message(e.to_bytes(), message_id=str(e.message_id)), e.routing_key
            )
            for e in events
        )
    )

    async def all_filed() -> bool:
        left = await db.fetchval("SELECT count(*) FROM content WHERE stage <> 'clustered'")
        return left == 0 and len(folder_snapshot(storage_path)) == 2 * sum(
            len(s.upload_ids) for s in seeded
        )

    await wait_for(all_filed, what="200 images filed and linked", timeout=90)
    assert all(p.poll() is None for p in processes), "a clusterer died"

    # The centroid is the sum's direction (exact); the HNSW search key stays within the drift.
    clusters = await db.fetch(
        """SELECT id, member_count, l2_normalize(centroid_sum)::text AS c,
                  centroid <=> centroid_sum AS drift
           FROM clusters"""
    )
    assert len(clusters) == 5
    members = {
        r["id"]: r["cluster_id"] for r in await db.fetch("SELECT id, cluster_id FROM content")
    }
    by_cluster: dict[Any, set[int]] = {}
    for s in seeded:
        by_cluster.setdefault(members[s.content_id], set()).add(s.label)
    assert sorted(len(v) for v in by_cluster.values()) == [1] * 5  # one kind per cluster
    for cluster in clusters:
        mine = [s.vector for s in seeded if members[s.content_id] == cluster["id"]]
        assert cluster["member_count"] == len(mine) == 40
        mean = np.sum(mine, axis=0)
        np.testing.assert_allclose(
            np.array(orjson.loads(cluster["c"])), mean / np.linalg.norm(mean), atol=1e-5
        )
        assert cluster["drift"] <= SEARCH_KEY_DRIFT + 1e-6

    # Every link present exactly once: one per upload in its content's folder (and a thumbnail).
    expected: dict[str, str | None] = {}
    for s in seeded:
        for upload_id in s.upload_ids:
            folder = f"media/clusters/{members[s.content_id]}"
            name = await db.fetchval("SELECT filename FROM uploads WHERE id = $1", upload_id)
            expected[f"{folder}/{link_name(upload_id, name, 'image/png')}"] = s.storage_key
            expected[f"{folder}/thumbnails/{thumbnail_name(upload_id)}"] = None
    snapshot = folder_snapshot(storage_path)
    assert snapshot.keys() == expected.keys()
    assert all(snapshot[k] == v for k, v in expected.items() if v is not None)

    # The folders rebuilt from scratch (even with the whole tree gone) equal the folders before.
    rebuild(clusterer_env)
    assert folder_snapshot(storage_path) == snapshot
    shutil.rmtree(storage_path / "media" / "clusters")
    rebuild(clusterer_env)
    assert folder_snapshot(storage_path) == snapshot
    await channel.close()
