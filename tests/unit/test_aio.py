"""wait_event: a wait that a loop can always be stopped from (Python 3.11's wait_for cannot)."""

from __future__ import annotations

import asyncio

import pytest

from common.aio import wait_event


async def _wait_then_clear_forever(event: asyncio.Event) -> None:
    """The shape of the outbox relay's and the micro-batcher's loops."""
    while True:
        await wait_event(event, 10)
        event.clear()


@pytest.mark.parametrize("spins", [0, 1, 2])
async def test_wait_event_loop_stops_when_cancelled_as_the_event_is_set(spins: int) -> None:
    # With asyncio.wait_for in its place the loop never stops for 0, 1 or 2 spins on 3.11:
    # the cancellation arrives as the event is set and wait_for returns instead of raising.
    event = asyncio.Event()
    task = asyncio.create_task(_wait_then_clear_forever(event))
    await asyncio.sleep(0)
    event.set()
    for _ in range(spins):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task} and task.cancelled()


async def test_wait_event_answers_whether_the_event_was_set_when_waiting() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(event, float("inf")) is True
