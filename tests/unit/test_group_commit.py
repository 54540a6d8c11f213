"""Group commit: concurrent callers share writes, each gets its own result, one bad item fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from common.group_commit import GroupCommit


class Recorder:
    def __init__(self, bad: int | None = None) -> None:
        self.groups: list[list[int]] = []
        self.bad = bad

    async def write(self, items: Sequence[int]) -> list[int]:
        self.groups.append(list(items))
        await asyncio.sleep(0.01)  # a database round trip: others queue meanwhile
        if self.bad in items:
            raise ValueError(f"bad item {self.bad}")
        return [item * 10 for item in items]


async def test_group_commit_groups_waiting_items_and_returns_each_its_own_result() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.write, name="test", max_batch=8, max_in_flight=1)
    assert await commit.submit(99) == 990  # a lone item is not kept waiting for company
    results = await asyncio.gather(*(commit.submit(i) for i in range(20)))
    assert results == [i * 10 for i in range(20)]
    assert recorder.groups == [[99], list(range(8)), list(range(8, 16)), list(range(16, 20))]


async def test_group_commit_fails_only_the_bad_item_when_a_group_fails() -> None:
    recorder = Recorder(bad=5)
    commit = GroupCommit(recorder.write, name="test", max_batch=8, max_in_flight=1)
    results = await asyncio.gather(*(commit.submit(i) for i in range(10)), return_exceptions=True)
    assert isinstance(results[5], ValueError)
    assert [r for i, r in enumerate(results) if i != 5] == [i * 10 for i in range(10) if i != 5]
    assert [5] in recorder.groups  # retried alone after its group failed


async def test_group_commit_limits_writes_in_flight() -> None:
    running = peak = 0

    async def write(items: Sequence[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return list(items)

    commit = GroupCommit(write, name="test", max_batch=2, max_in_flight=2)
    assert await asyncio.gather(*(commit.submit(i) for i in range(12))) == list(range(12))
    assert peak == 2


@pytest.mark.parametrize("max_in_flight", [1, 3])
async def test_group_commit_keeps_order_within_a_group(max_in_flight: int) -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.write, name="test", max_batch=64, max_in_flight=max_in_flight)
    await asyncio.gather(*(commit.submit(i) for i in range(30)))
    assert all(group == sorted(group) for group in recorder.groups)
