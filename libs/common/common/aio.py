"""asyncio helpers the standard library gets subtly wrong on Python 3.11."""

from __future__ import annotations

import asyncio
import math


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; True if it was set.

    Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that arrives as the
    event is set (it returns the result instead of raising), so a loop waiting this way
    could never be stopped — seen as a gateway whose outbox relay outlived its shutdown.
    `asyncio.timeout` tells its own cancellation from anyone else's.
    """
    try:
        async with asyncio.timeout(None if math.isinf(timeout) else timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class InFlight:
    """Counts work in progress (deliveries being handled), so a stop can wait for it."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *_: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight, at most `timeout` seconds; True if so."""
        return await wait_event(self._idle, timeout)
