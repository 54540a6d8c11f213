"""A VLM rate limit that holds across every analyzer replica: a sliding window in PostgreSQL.

Each call is a row in `vlm_calls`; taking a slot counts the rows of the last window under a
transaction-level advisory lock (one short transaction per call) and inserts one when there
is room. The database's clock is the one clock all replicas share. A small margin on the
window keeps network jitter from letting the server see one call too many in its own window.
"""

from __future__ import annotations

import asyncio

import asyncpg

from analyzer import repo


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
            await repo.lock_vlm_window(conn)
            await repo.forget_vlm_calls(conn, self.window_s)
            calls, wait = await repo.vlm_window(conn, self.window_s)
            if calls < self.per_window:
                await repo.record_vlm_call(conn)
                return 0.0
            assert wait is not None  # a full window holds at least one call
            return max(0.01, wait)
