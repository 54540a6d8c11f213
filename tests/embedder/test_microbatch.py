"""The model batcher on a real (tiny) ONNX model: batches form, text goes first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from embedder.microbatch import ModelBatcher
from embedder.model import OnnxModel


async def test_batcher_serves_text_before_waiting_images_when_both_are_queued(
    tiny_clip_dir: Path,
) -> None:
    model = OnnxModel(tiny_clip_dir / "clip-tiny", providers=("cpu",), threads=1)
    batcher = ModelBatcher(model, max_batch=4, max_wait=0.05)
    batcher.start()
    order: list[str] = []
    size = model.manifest.preprocess.image_size
    pixels = np.zeros((3, size, size), dtype=np.float32)

    async def image(i: int) -> np.ndarray:
        vector = await batcher.embed_image(pixels + i / 100)
        order.append(f"image{i}")
        return vector

    async def text() -> np.ndarray:
        vector = await batcher.embed_text("a black cat")
        order.append("text")
        return vector

    try:
        images = [asyncio.create_task(image(i)) for i in range(16)]
        await asyncio.sleep(0)  # the images are queued first
        vectors = await asyncio.gather(text(), *images)
    finally:
        await batcher.close()
    # Four image batches were waiting; the text went out right after the first.
    assert order.index("text") <= 4
    assert all(abs(float(np.linalg.norm(v)) - 1) < 1e-4 for v in vectors)
    direct = model.embed_images(np.stack([pixels + i / 100 for i in range(16)]))
    np.testing.assert_allclose(np.stack(vectors[1:]), direct, atol=1e-5)
