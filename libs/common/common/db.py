"""The asyncpg pool: sized from settings, pgvector codec on every connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
import structlog
from asyncpg.connection import LoggedQuery
from pgvector.asyncpg import register_vector
from prometheus_client import Histogram

from common.settings import CommonSettings

log = structlog.get_logger(__name__)

DB_QUERY_DURATION = Histogram(
    "db_query_duration_seconds",
    "Duration of database work, by operation.",
    ["operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


# Statements are timed by their first keyword: a bounded label whatever the SQL.
STATEMENTS = ("select", "insert", "update", "delete", "with", "begin", "commit", "rollback")
for _operation in (*STATEMENTS, "other"):
    DB_QUERY_DURATION.labels(_operation)


def _observe(query: LoggedQuery) -> None:
    words = query.query.lstrip(" \n\t(").split(None, 1)
    first = words[0].rstrip(";").lower() if words else ""
    DB_QUERY_DURATION.labels(first if first in STATEMENTS else "other").observe(query.elapsed)


async def _init_connection(conn: asyncpg.Connection) -> None:
    conn.add_query_logger(_observe)  # every statement's time, in db_query_duration_seconds
    await register_vector(conn)
    # jsonb in and out as Python objects, so callers never hand-serialise.
    import orjson

    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _reset(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool without asyncpg's full reset query.

    Our code keeps no session state (no SET, LISTEN or cursors; the clusterer's session
    advisory locks on folders are released before the connection goes back, or the
    connection is terminated), so the full reset (one more round trip per checkout) only costs; an
    open transaction, which would mean a bug, is still rolled back.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


CLOSE_TIMEOUT_S = 10.0


@asynccontextmanager
async def open_pool(settings: CommonSettings, **overrides: Any) -> AsyncIterator[asyncpg.Pool]:
    """Open the pool (min = DB_POOL_SIZE, max = size + DB_MAX_OVERFLOW) and close it after."""
    options: dict[str, Any] = {
        "min_size": settings.db_pool_size,
        "max_size": settings.db_pool_max,
        "init": _init_connection,
        "reset": _reset,
        "command_timeout": 30,
    }
    options.update(overrides)
    pool = await asyncpg.create_pool(settings.database_dsn, **options)
    try:
        yield pool
    finally:
        # A graceful close waits for every connection to come back; a stop must not hang on
        # one that does not (a query stuck on a lock, a task that was never cancelled).
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("database pool did not close in time; terminating its connections")
            pool.terminate()


@asynccontextmanager
async def timed(operation: str) -> AsyncIterator[None]:
    """Record the wall time of a block of database work in db_query_duration_seconds."""
    start = time.perf_counter()
    try:
        yield
    finally:
        DB_QUERY_DURATION.labels(operation).observe(time.perf_counter() - start)


Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool
_QUOTED: dict[str, str] = {}
_QUOTED_MAX = 100_000


async def quoted(conn: Conn, names: Sequence[str]) -> list[str]:
    """The names as the server quotes identifiers (quote_ident): nothing else quotes them.
    Kept in a bounded cache: the same table and column names come back on every batch."""
    missing = [n for n in dict.fromkeys(names) if n not in _QUOTED]
    if missing:
        rows = await conn.fetch(
            "SELECT n, quote_ident(n) AS q FROM unnest($1::text[]) AS t(n)", missing
        )
        if len(_QUOTED) + len(rows) > _QUOTED_MAX:
            _QUOTED.clear()
        _QUOTED.update((row["n"], row["q"]) for row in rows)
        found = {row["n"]: row["q"] for row in rows}
        return [_QUOTED.get(n) or found[n] for n in names]
    return [_QUOTED[n] for n in names]
