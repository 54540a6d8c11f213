"""Group commit for ingests: concurrent uploads share one statement and one WAL flush.

Each request still waits for its own rows to be durable before its 202.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from common.db import timed
from common.group_commit import GroupCommit
from gateway.repo import IngestRecord, IngestRequest, write_ingests

IngestBatcher = GroupCommit[IngestRequest, IngestRecord]


def ingest_batcher(pool: asyncpg.Pool) -> IngestBatcher:
    async def write(batch: Sequence[IngestRequest]) -> list[IngestRecord]:
        async with timed("ingest_batch"), pool.acquire() as conn:
            return await write_ingests(conn, list(batch))

    return GroupCommit(write, name="ingest", max_batch=64, max_in_flight=2)
