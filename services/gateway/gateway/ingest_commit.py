"""Group commit for ingests: concurrent uploads share one statement and one WAL flush.

Each request still waits for its own rows to be durable before its 202.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from common.db import timed
from common.group_commit import GroupCommit
from gateway.repo import IngestRecord, IngestRequest, record_ingests


@dataclass(frozen=True)
class PendingIngest:
    """A request whose files are placed, and how to place them again (see record_ingests)."""

    request: IngestRequest
    ensure_placed: Callable[[], Awaitable[None]]


IngestCommit = GroupCommit[PendingIngest, IngestRecord]


def ingest_commit(pool: asyncpg.Pool) -> IngestCommit:
    async def write(batch: Sequence[PendingIngest]) -> list[IngestRecord]:
        async with timed("ingest_batch"), pool.acquire() as conn:
            return await record_ingests(
                conn, [p.request for p in batch], [p.ensure_placed for p in batch]
            )

    return GroupCommit(write, name="ingest", max_batch=64, max_in_flight=2)
