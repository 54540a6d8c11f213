"""Micro-batching in front of the model: one inference call serves many waiting requests.

Items are gathered until the batch is full or `max_wait` has passed since the first one
arrived, so the model sees batches under load and a lone image is not kept waiting. Text
requests (search is interactive) are served ahead of images, and images of new uploads ahead
of a model switch's backfill (background work that must not slow them down). Inference runs in one
dedicated thread: onnxruntime releases the GIL and the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray
from opentelemetry import trace
from opentelemetry.trace import SpanContext
from prometheus_client import Counter, Histogram

from common.aio import wait_event
from common.telemetry import batch_span, current_span_context
from embedder.model import EmbeddingModel

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("mammothbox.embedder")

BATCH_SIZE = Histogram(
    "embedder_batch_size",
    "Items per inference call.",
    ["input"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INFERENCE_SECONDS = Histogram(
    "embedder_inference_seconds",
    "Wall time of one inference call.",
    ["input"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EMBEDDED = Counter("embedder_items_total", "Items embedded (rate() gives images/s).", ["input"])
for _input in ("image", "text"):
    BATCH_SIZE.labels(_input)
    INFERENCE_SECONDS.labels(_input)
    EMBEDDED.labels(_input)


@dataclass
class _Item:
    payload: NDArray[np.float32] | str
    future: asyncio.Future[NDArray[np.float32]]
    span: SpanContext  # the caller's, which the batch's span links


class ModelBatcher:
    def __init__(
        self,
        model: EmbeddingModel,
        *,
        max_batch: int,
        max_wait: float,
        max_background_batch: int | None = None,
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        # A backfill batch is small: a new upload's image that arrives while one runs waits
        # for that inference to end, so its length bounds the new upload's extra latency.
        self.max_background_batch = min(max_batch, max_background_batch or max_batch)
        self.max_wait = max_wait
        self._images: asyncio.Queue[_Item] = asyncio.Queue()
        self._texts: asyncio.Queue[_Item] = asyncio.Queue()
        self._background: asyncio.Queue[_Item] = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="model-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def embed_image(self, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        """One unit vector for one preprocessed image [3, S, S]."""
        return await self._submit(self._images, pixels)

    async def embed_background(self, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        """As embed_image, served only when no text or new image waits (the backfill)."""
        return await self._submit(self._background, pixels)

    async def embed_text(self, text: str) -> NDArray[np.float32]:
        return await self._submit(self._texts, text)

    async def _submit(
        self, queue: asyncio.Queue[_Item], payload: NDArray[np.float32] | str
    ) -> NDArray[np.float32]:
        future: asyncio.Future[NDArray[np.float32]] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Item(payload, future, current_span_context()))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            if self._texts.empty() and self._images.empty() and self._background.empty():
                self._wakeup.clear()
                await self._wakeup.wait()
            # Text first: a search waits on it; then new uploads' images; then the backfill.
            if not self._texts.empty():
                queue, kind = self._texts, "text"
            elif not self._images.empty():
                queue, kind = self._images, "image"
            else:
                queue, kind = self._background, "image"
            batch = await self._gather(queue)
            await self._infer(batch, kind)

    async def _gather(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        batch = [queue.get_nowait()]
        deadline = time.monotonic() + self.max_wait
        limit = self.max_background_batch if queue is self._background else self.max_batch
        while True:
            while len(batch) < limit and not queue.empty():
                batch.append(queue.get_nowait())
            remaining = deadline - time.monotonic()
            if len(batch) >= limit or remaining <= 0:
                break
            if queue is not self._texts and not self._texts.empty():
                break  # a text request arrived: serve it before filling this image batch
            if queue is self._background and not self._images.empty():
                break  # so did a new upload's image: the backfill waits
            # Waiting on an event, not on queue.get(): a timeout can never drop an item.
            self._wakeup.clear()
            await wait_event(self._wakeup, remaining)
        return batch

    async def _infer(self, batch: list[_Item], kind: str) -> None:
        live = [item for item in batch if not item.future.done()]  # skip callers that gave up
        if not live:
            return
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        with batch_span(
            tracer,
            f"embed {kind} batch",
            [item.span for item in live],
            **{"mammothbox.input": kind, "mammothbox.model_id": self.model.model_id},
        ):
            await self._infer_live(loop, live, kind, start)

    async def _infer_live(
        self, loop: asyncio.AbstractEventLoop, live: list[_Item], kind: str, start: float
    ) -> None:
        try:
            if kind == "text":
                texts = [str(item.payload) for item in live]
                vectors = await loop.run_in_executor(self._executor, self.model.embed_texts, texts)
            else:
                pixels = np.stack([np.asarray(item.payload, dtype=np.float32) for item in live])
                vectors = await loop.run_in_executor(
                    self._executor, self.model.embed_images, pixels
                )
        except Exception as error:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        INFERENCE_SECONDS.labels(kind).observe(time.perf_counter() - start)
        BATCH_SIZE.labels(kind).observe(len(live))
        EMBEDDED.labels(kind).inc(len(live))
        for item, vector in zip(live, vectors, strict=True):
            if not item.future.done():
                item.future.set_result(vector)
