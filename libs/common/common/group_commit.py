"""Group commit: concurrent callers share one database write (one transaction, one WAL flush).

Each caller still waits for its own result. Groups form by themselves: while `max_in_flight`
writes are running, new items queue and go out together in the next one, so a lone item is
never kept waiting for company.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from common.telemetry import batch_span, current_span_context

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("mammothbox.group_commit")

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """`write` takes a group of items and returns one result per item, in order."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        name: str,
        max_batch: int = 64,
        max_in_flight: int = 2,
    ) -> None:
        self.write = write
        self.name = name
        self.max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: list[tuple[T, asyncio.Future[R], SpanContext]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Write one item (with whoever else is waiting) and return its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future, current_span_context()))
        task = asyncio.create_task(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self) -> None:
        async with self._slots:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[tuple[T, asyncio.Future[R], SpanContext]]) -> None:
        # One span for the shared write, linking the callers' spans (common.telemetry).
        with batch_span(tracer, f"{self.name} group commit", [span for _, _, span in batch]):
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R], SpanContext]]) -> None:
        try:
            results = await self.write([item for item, _, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                _, future, _ = batch[0]
                if not future.done():
                    future.set_exception(error)
                return
            # One bad item must not fail its neighbours: write them one by one.
            log.warning(
                "batched write failed; retrying one by one", writer=self.name, error=str(error)
            )
            for entry in batch:
                await self._write_batch([entry])
            return
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
