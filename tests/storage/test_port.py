"""The storage port's contract, held by both backends (a folder, and S3 on a real S3 API)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from common.storage import Storage, StorageError, chunks_of, key_for

pytestmark = pytest.mark.both_storage_backends
MiB = 1024 * 1024


def written(storage: Storage, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "storage_objects_written_total", {"backend": storage.backend, "outcome": outcome}
    )
    return value or 0.0


async def all_objects(storage: Storage) -> list[str]:
    keys = []
    for prefix in await storage.object_prefixes():
        keys += await storage.objects_older_than(prefix, time.time() + 3600)
    return sorted(keys)


async def test_put_stores_once_under_the_hash_name_when_the_same_bytes_come_twice(
    storage: Storage,
) -> None:
    stored_before, present_before = written(storage, "stored"), written(storage, "present")
    first = await storage.put(chunks_of(b"hello world", 5))
    second = await storage.put(chunks_of(b"hello world"))
    assert first == second
    assert first.key == key_for(hashlib.sha256(b"hello world").hexdigest()) and first.size == 11
    assert written(storage, "stored") - stored_before == 1
    assert written(storage, "present") - present_before == 1
    found = await storage.stat(first.key)
    assert found is not None and found.size == 11
    assert await all_objects(storage) == [first.key]
    assert await storage.temp_files() == []


@pytest.mark.parametrize("size", [100, 11 * MiB], ids=["one-part", "multipart"])
async def test_a_stream_that_fails_leaves_nothing_when_the_client_goes_away(
    storage: Storage, size: int
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(os.urandom(size), MiB):
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await storage.put(broken())
    assert await storage.temp_files() == []
    assert await all_objects(storage) == []


async def test_two_writers_of_the_same_bytes_at_once_store_one_object(storage: Storage) -> None:
    data = os.urandom(4096)
    stored_before = written(storage, "stored")
    results = await asyncio.gather(*(storage.put(chunks_of(data)) for _ in range(4)))
    assert len({r.key for r in results}) == 1
    assert written(storage, "stored") - stored_before == 1  # the others found it there
    assert await all_objects(storage) == [results[0].key]


async def test_writers_of_the_same_large_bytes_named_together_store_one_object(
    storage: Storage,
) -> None:
    # As one group commit names two uploads of the same bytes, in one transaction (so under
    # one lock) and at once.
    data = os.urandom(6 * MiB)
    stored_before = written(storage, "stored")
    writers = [storage.writer() for _ in range(3)]
    for writer in writers:
        for start in range(0, len(data), MiB):
            await writer.write(data[start : start + MiB])
        await writer.commit()
    await asyncio.gather(*(writer.ensure_placed() for writer in writers))
    for writer in writers:
        await writer.abort()
    assert written(storage, "stored") - stored_before == 1
    assert len(await all_objects(storage)) == 1 and await storage.temp_files() == []


@pytest.mark.parametrize(
    "key",
    [
        "../outside",
        "/etc/passwd",
        "objects/../../x",
        "objects/./x",
        "",
        "a\x00b",
        "..",
        "a\\b",
        "objects//x",
        "a/\nb",
    ],
)
async def test_a_key_that_could_leave_the_store_is_refused_when_hostile(
    storage: Storage, key: str
) -> None:
    with pytest.raises(StorageError):
        await storage.stat(key)
    with pytest.raises(StorageError):
        await storage.delete(key)
    with pytest.raises(StorageError):
        async with storage.local_file(key):
            pass
    with pytest.raises(StorageError):
        _ = [c async for c in storage.open(key)]


async def test_reads_stream_ranges_and_local_copies_when_asked(storage: Storage) -> None:
    data = os.urandom(6 * MiB + 123)
    stored = await storage.put(chunks_of(data, MiB))
    whole = b"".join([c async for c in storage.open(stored.key, chunk_size=65536)])
    assert whole == data
    part = b"".join([c async for c in storage.open(stored.key, start=MiB - 7, length=1000)])
    assert part == data[MiB - 7 : MiB + 993]
    tail = b"".join([c async for c in storage.open(stored.key, start=len(data) - 5)])
    assert tail == data[-5:]
    assert await storage.read(stored.key, limit=len(data)) == data
    with pytest.raises(StorageError):
        await storage.read(stored.key, limit=len(data) - 1)
    scratch_before = sorted(storage.scratch_dir.iterdir())
    async with storage.local_file(stored.key) as local:
        assert local.read_bytes() == data
        assert local.is_relative_to(storage.scratch_dir)  # never a path into the objects
        if storage.backend == "filesystem":
            await storage.delete(stored.key)  # purged while a decoder reads it
            assert local.read_bytes() == data
    assert not local.exists()  # the temporary name went with the block
    assert sorted(storage.scratch_dir.iterdir()) == scratch_before
    if storage.backend == "filesystem":
        stored = await storage.put(chunks_of(data, MiB))
    with pytest.raises(FileNotFoundError):
        async with storage.local_file(key_for("0" * 64)):
            pass
    assert await storage.stat(key_for("0" * 64)) is None


async def test_an_empty_object_reads_as_empty_whatever_the_range(storage: Storage) -> None:
    stored = await storage.put(chunks_of(b""))
    assert stored.size == 0 and await storage.read(stored.key, limit=10) == b""
    assert [c async for c in storage.open(stored.key, start=0, length=5)] == []
    async with storage.local_file(stored.key) as local:
        assert local.read_bytes() == b""


@pytest.mark.parametrize("size", [100, 6 * MiB], ids=["one-part", "multipart"])
async def test_ensure_placed_stores_the_content_again_when_it_was_removed_after_commit(
    storage: Storage, size: int
) -> None:
    data = os.urandom(size)
    writer = storage.writer()
    for start in range(0, size, 256 * 1024):
        await writer.write(data[start : start + 256 * 1024])
    stored = await writer.commit()
    await writer.ensure_placed()
    await storage.delete(stored.key)  # the sweeper, before the row committed
    await writer.ensure_placed()
    assert await storage.read(stored.key, limit=size) == data
    await writer.abort()
    assert await storage.temp_files() == []
    assert await all_objects(storage) == [stored.key]


async def test_remove_orphan_keeps_an_object_when_it_was_stored_after_the_cutoff(
    storage: Storage,
) -> None:
    stored = await storage.put(chunks_of(b"orphan"))
    assert not await storage.remove_orphan(stored.key, time.time() - 3600)
    assert await storage.read(stored.key, limit=100) == b"orphan"
    assert await storage.remove_orphan(stored.key, time.time() + 1)
    assert await storage.stat(stored.key) is None
    assert not await storage.remove_orphan(stored.key, time.time() + 1)  # gone already


async def test_uploads_abandoned_by_a_killed_process_are_swept_when_old(storage: Storage) -> None:
    # A writer that never ends (its process killed): part of its bytes are in the store.
    writer = storage.writer()
    await writer.write(os.urandom(6 * MiB))
    await writer.write(b"and more")
    await asyncio.sleep(0.2)  # the first part on its way (S3)
    assert await storage.temp_files() != []
    kept = await storage.remove_stale_temp(3600)
    assert kept.files + kept.uploads == 0
    swept = await storage.remove_stale_temp(0)
    assert swept.files + swept.uploads == 1
    assert await storage.temp_files() == []
    await writer.abort()  # what the process would have done: harmless after the sweep


async def test_health_probes_answer_when_the_store_is_reachable(storage: Storage) -> None:
    assert await storage.writable()
    capacity = await storage.capacity()
    if storage.backend == "filesystem":
        assert capacity.free is not None and capacity.free > 0
        assert set(storage.describe()) == {"path"}
    else:
        assert capacity.free is None  # a bucket has no free space to speak of
        assert {"endpoint", "bucket", "prefix"} <= set(storage.describe())
    assert await storage.temp_files() == []  # the probe left nothing


async def test_read_url_lets_a_client_fetch_the_bytes_itself_when_the_backend_signs(
    storage: Storage,
) -> None:
    stored = await storage.put(chunks_of(b"\x89PNG fetched directly"))
    url = await storage.read_url(stored.key, expires=60, content_type="image/png")
    if storage.backend == "filesystem":
        assert url is None  # served by the gateway itself
        return
    assert url is not None
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "image/png"
        assert await answer.read() == b"\x89PNG fetched directly"
    # (moto does not check signatures, so a tampered URL is not tried here.)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url


def test_the_filesystem_scratch_is_inside_the_store_and_s3_scratch_is_local(
    storage: Storage, storage_path: Path
) -> None:
    if storage.backend == "filesystem":
        assert storage.scratch_dir == storage_path.resolve() / "tmp"
    else:
        assert not storage.scratch_dir.is_relative_to(storage_path)
