"""A VLM rate limit that holds across every analyzer replica: a sliding window in PostgreSQL.

Each call is a row in `vlm_calls`; taking a slot counts the rows of the last window under a
transaction-level advisory lock (one short transaction per call) and inserts one when there
is room. The database's clock is the one clock all replicas share. A small margin on the
window keeps network jitter from letting the server see one call too many in its own window.
"""

from __future__ import annotations

import asyncio

import asyncpg

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('mammothbox.vlm-rate', 0))"


class RateLimiter:
    def __init__(self, pool: asyncpg.Pool, per_window: int, window_s: float) -> None:
        self.pool = pool
        self.per_window = per_window
        self.window_s = window_s * 1.02 + 0.1

    async def acquire(self) -> float:
        """Wait for a slot and take it; returns the seconds waited."""
        if self.per_window <= 0:
            return 0.0
        waited = 0.0
        while True:
            wait = await self._try()
            if wait <= 0:
                return waited
            await asyncio.sleep(wait)
            waited += wait

    async def _try(self) -> float:
        """Take a slot (0.0) or say how long until the oldest call leaves the window."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK)
            await conn.execute(
                "DELETE FROM vlm_calls WHERE at < clock_timestamp() - make_interval(secs => $1)",
                self.window_s,
            )
            row = await conn.fetchrow(
                """SELECT count(*) AS calls,
                          extract(epoch FROM min(at) + make_interval(secs => $1)
                                             - clock_timestamp()) AS wait
                   FROM vlm_calls""",
                self.window_s,
            )
            assert row is not None
            if row["calls"] < self.per_window:
                await conn.execute("INSERT INTO vlm_calls DEFAULT VALUES")
                return 0.0
            return max(0.01, float(row["wait"]))
