"""Group commit: concurrent ingests share one statement and one WAL flush.

Each request still waits for its own rows to be durable before its 202. Batches form by
themselves: while `max_in_flight` writes are running, new requests queue and go out together
in the next one, so a lone request is never kept waiting for company.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from common.db import timed
from gateway.repo import IngestRecord, IngestRequest, write_ingests

log = structlog.get_logger(__name__)


class IngestBatcher:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 64, max_in_flight: int = 2) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: list[tuple[IngestRequest, asyncio.Future[IngestRecord]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: IngestRequest) -> IngestRecord:
        """Record one request (with whoever else is waiting) and return its record."""
        future: asyncio.Future[IngestRecord] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        task = asyncio.create_task(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self) -> None:
        async with self._slots:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[tuple[IngestRequest, asyncio.Future[IngestRecord]]]) -> None:
        try:
            async with timed("ingest_batch"), self.pool.acquire() as conn:
                records = await write_ingests(conn, [request for request, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                _, future = batch[0]
                if not future.done():
                    future.set_exception(error)
                return
            # One bad request must not fail its neighbours: write them one by one.
            log.warning("batched ingest failed; retrying one by one", error=str(error))
            for item in batch:
                await self._write([item])
            return
        for (_, future), record in zip(batch, records, strict=True):
            if not future.done():
                future.set_result(record)
