"""Real photos through the real image encoder (EfficientNet-Lite2) cluster by kind."""

from __future__ import annotations

import io
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clusterer.app import running
from clusterer.handlers import ClustererDeps
from clusterer.settings import ClustererSettings
from embedder.handlers import EmbedderDeps
from embedder.manifest import Manifest
from embedder.model import OnnxModel
from embedder.preprocess import batch, to_model_input
from mammoth_export.efficientnet import LITE2_CLUSTER_THRESHOLD
from mammoth_export.sample_photos import calibrate_threshold, kind_photos
from tests.clusterer.test_pipeline import upload, wait_done
from tests.integration.conftest import Gateway


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def lite2_embedder(
    start_embedder: Callable[[Path, str], AbstractAsyncContextManager[EmbedderDeps]],
    lite2_models: Path,
) -> AsyncIterator[EmbedderDeps]:
    async with start_embedder(lite2_models, "efficientnet-lite2") as deps:
        yield deps


def test_lite2_threshold_sits_in_the_gap_between_kinds_when_calibrated(lite2_models: Path) -> None:
    directory = lite2_models / "efficientnet-lite2"
    model = OnnxModel(directory, providers=("cpu",), threads=2)
    photos = kind_photos()
    pixels = batch([to_model_input(image, model.manifest.preprocess) for _, image in photos])
    vectors = model.embed_images(pixels)
    threshold, lowest_same, highest_other = calibrate_threshold(vectors, [k for k, _ in photos])
    assert Manifest.read(directory).cluster_threshold == LITE2_CLUSTER_THRESHOLD
    assert lowest_same - 0.05 > LITE2_CLUSTER_THRESHOLD > highest_other + 0.05
    assert abs(threshold - LITE2_CLUSTER_THRESHOLD) < 0.02


@pytest.fixture
async def clusterer_at_manifest_threshold(
    clusterer_settings: Callable[..., ClustererSettings],
) -> AsyncIterator[ClustererDeps]:
    """CLUSTER_THRESHOLD set explicitly to the manifest's value: no calibration."""
    async with running(clusterer_settings(cluster_threshold=LITE2_CLUSTER_THRESHOLD)) as deps:
        await deps.bus.wait_connected(10)
        yield deps


async def test_crops_of_photos_cluster_by_kind_at_an_explicit_threshold_in_random_order(
    gateway: Gateway,
    lite2_embedder: EmbedderDeps,
    clusterer_at_manifest_threshold: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    # Crops and quarters of a few pictures (near-duplicates of each other, not different
    # photos of a kind: bench/cluster_quality.py measures those): the threshold they were
    # calibrated on, set as CLUSTER_THRESHOLD, files them exactly by kind.
    photos = kind_photos()
    random.Random(5).shuffle(photos)
    ids = await upload(
        gateway, *((f"{kind}-{i}.png", png(image)) for i, (kind, image) in enumerate(photos))
    )
    await wait_done(ids, db, storage_path, timeout=90)
    rows = await db.fetch(
        """SELECT u.id, c.cluster_id FROM uploads u JOIN content c ON c.id = u.content_id
           WHERE u.id = ANY($1::uuid[])""",
        [uuid.UUID(i) for i in ids],
    )
    cluster_of = {str(r["id"]): r["cluster_id"] for r in rows}
    kinds_in: dict[uuid.UUID, set[str]] = {}
    clusters_of: dict[str, set[uuid.UUID]] = {}
    for (kind, _), upload_id in zip(photos, ids, strict=True):
        kinds_in.setdefault(cluster_of[upload_id], set()).add(kind)
        clusters_of.setdefault(kind, set()).add(cluster_of[upload_id])
    assert all(len(k) == 1 for k in kinds_in.values()), kinds_in  # no cluster mixes kinds
    assert all(len(c) == 1 for c in clusters_of.values()), clusters_of  # no kind is split
    clusters = await db.fetch("SELECT name, threshold FROM clusters")
    assert len(clusters) == 5
    # No cluster has its own threshold; the model's is the override, flat, for every size.
    assert all(c["threshold"] is None for c in clusters)
    calibration = await db.fetchval(
        "SELECT calibration::text FROM models WHERE id = 'efficientnet-lite2-imagenet'"
    )
    assert '"source": "override"' in calibration.replace('":"', '": "')
    # No text encoder, so placeholders are untitled.
    assert all(c["name"].startswith("untitled ") for c in clusters)
