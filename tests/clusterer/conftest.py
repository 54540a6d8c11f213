"""A clusterer (and, for tests of meaning, an embedder on the colour model) per test."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from clusterer.app import running
from clusterer.handlers import ClustererDeps
from clusterer.settings import ClustererSettings
from common.storage import Storage
from common.vectors import register_model
from embedder.app import running as embedder_running
from embedder.handlers import EmbedderDeps
from embedder.settings import EmbedderSettings
from mammoth_export.colour_model import COLOURS, export_colour_model
from tests.conftest import BusNames

COLOUR_WORDS = tuple(COLOURS)


@pytest.fixture(scope="session")
def colour_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    export_colour_model(models / "colour")
    return models


@pytest.fixture
def clusterer_settings(common_settings: dict[str, Any]) -> Callable[..., ClustererSettings]:
    def make(**overrides: Any) -> ClustererSettings:
        values: dict[str, Any] = {
            **common_settings,
            "cluster_labels": COLOUR_WORDS,
            "label_timeout_s": 2.0,
            "folder_sweep_interval_s": 0.5,
            "worker_http_port": 0,
        }
        values.update(overrides)
        return ClustererSettings(**values)

    return make


@pytest.fixture
async def clusterer(
    clusterer_settings: Callable[..., ClustererSettings],
) -> AsyncIterator[ClustererDeps]:
    async with running(clusterer_settings()) as deps:
        await deps.bus.wait_connected(10)
        yield deps


@pytest.fixture
def start_embedder(
    common_settings: dict[str, Any],
) -> Callable[..., AbstractAsyncContextManager[EmbedderDeps]]:
    """Start an embedder on the model MODEL_DIR/name (and settings overrides); it stops when
    the block ends."""

    @asynccontextmanager
    async def start(model_dir: Path, name: str, **overrides: Any) -> AsyncIterator[EmbedderDeps]:
        values: dict[str, Any] = {
            **common_settings,
            "model_dir": model_dir,
            "embedding_model": name,
            "onnx_providers": ("cpu",),
            "intra_op_threads": 2,
            "max_batch_size": 16,
            "max_batch_wait_ms": 20,
            "decode_workers": 2,
            "worker_http_port": 0,
        }
        settings = EmbedderSettings(**{**values, **overrides})
        async with embedder_running(settings) as deps:
            await deps.bus.wait_connected(10)
            yield deps

    return start


@pytest.fixture
async def colour_embedder(
    start_embedder: Callable[[Path, str], AbstractAsyncContextManager[EmbedderDeps]],
    colour_models: Path,
) -> AsyncIterator[EmbedderDeps]:
    async with start_embedder(colour_models, "colour") as deps:
        yield deps


def colour_png(rgb: tuple[int, int, int], seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A distinct image that is mostly `rgb` (jittered), so its colour embedding is clear."""
    rng = np.random.default_rng(seed)
    pixels = np.array(rgb, dtype=np.float64) + rng.normal(0, 12, (size[1], size[0], 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def folder_snapshot(storage_root: Path) -> dict[str, str]:
    """Every link under media/clusters/ and what it resolves to (relative to the root)."""
    root = storage_root / "media" / "clusters"
    found: dict[str, str] = {}
    if not root.exists():
        return found
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.startswith("."):
                continue  # a link being made: staged under a hidden name, then renamed
            path = Path(dirpath) / name
            assert path.is_symlink(), f"{path} is not a link"
            found[str(path.relative_to(storage_root))] = str(
                path.resolve().relative_to(storage_root.resolve())
            )
    return found


@dataclass(frozen=True)
class Seeded:
    content_id: uuid.UUID
    upload_ids: tuple[uuid.UUID, ...]
    storage_key: str
    label: int
    vector: NDArray[np.float32]


async def seed_embedded(
    db: asyncpg.Connection,
    storage: Storage,
    model_id: str,
    vectors: NDArray[np.float32],
    labels: list[int],
    *,
    uploads_per_content: Callable[[int], int] = lambda i: 1,
) -> list[Seeded]:
    """Content the embedder has finished with: stored bytes, a thumbnail, embeddings, uploads.

    Built directly in the database so that a test of the clusterer starts at its own input.
    """
    await register_model(db, model_id, vectors.shape[1])
    job_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'tester', 'seed')", job_id
    )
    seeded = []
    position = 0
    for i, (vector, label) in enumerate(zip(vectors, labels, strict=True)):
        data = f"content {i} {uuid.uuid4()}".encode()

        async def chunks(payload: bytes = data) -> AsyncIterator[bytes]:
            yield payload

        stored = await storage.put(chunks())
        thumb = await storage.put(chunks(b"thumbnail " + data))
        content_id = uuid.uuid4()
        await db.execute(
            """INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key,
                                    stage, first_job_id, thumbnail_key)
               VALUES ($1, $2, 'image', 'image/png', $3, $4, 'embedded', $5, $6)""",
            content_id,
            hashlib.sha256(data).hexdigest(),
            len(data),
            stored.key,
            job_id,
            thumb.key,
        )
        await db.execute(
            "INSERT INTO embeddings (content_id, model_id, embedding) VALUES ($1, $2, $3::text::vector)",
            content_id,
            model_id,
            "[" + ",".join(f"{float(v):.9g}" for v in vector) + "]",
        )
        uploads = []
        for _ in range(uploads_per_content(i)):
            upload_id = uuid.uuid4()
            await db.execute(
                """INSERT INTO uploads (id, job_id, content_id, owner, filename, position)
                   VALUES ($1, $2, $3, 'tester', $4, $5)""",
                upload_id,
                job_id,
                content_id,
                f"item {i}.png",
                position,
            )
            position += 1
            uploads.append(upload_id)
        seeded.append(Seeded(content_id, tuple(uploads), stored.key, label, vector))
    return seeded


def kinds(
    count: int, per_kind: int, dim: int, spread: float, seed: int = 0
) -> tuple[NDArray[np.float32], list[int]]:
    """Unit vectors around `count` random directions, shuffled: labelled synthetic embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = [k for k in range(count) for _ in range(per_kind)]
    rng.shuffle(labels)
    vectors = centres[labels] + rng.normal(scale=spread / np.sqrt(dim), size=(len(labels), dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


__all__ = ["BusNames"]


def consumers_on(
    amqp: aio_pika.abc.AbstractRobustConnection, queue: str, consumers: int
) -> Callable[[], Awaitable[bool]]:
    """A check for wait_for: does the queue exist with this many consumers?"""

    async def check() -> bool:
        channel = await amqp.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.consumer_count == consumers
        except aio_pika.exceptions.ChannelClosed:
            return False
        finally:
            if not channel.is_closed:
                await channel.close()

    return check


# The gateway fixtures, so a test can upload through HTTP and let the real pipeline run.
from tests.integration.conftest import gateway, start_gateway  # noqa: E402, F401
