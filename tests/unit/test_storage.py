"""The filesystem storage backend's own behaviour (the port's contract: tests/storage)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.storage import StorageError, key_for
from common.storage.filesystem import FileSystemStorage


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_put_stores_once_under_hash_name_when_same_bytes_twice(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path, fsync=True)
    first = await storage.put(chunks(b"hello ", b"world"))
    second = await storage.put(chunks(b"hello world"))
    digest = hashlib.sha256(b"hello world").hexdigest()
    assert first == second
    assert first.key == key_for(digest) and first.size == 11
    path = storage.path(first.key)
    assert path.read_bytes() == b"hello world"
    assert not os.access(path, os.W_OK) or os.geteuid() == 0  # read-only (root ignores modes)
    assert oct(path.stat().st_mode & 0o777) == "0o444"
    assert await storage.temp_files() == []
    stat = await storage.stat(first.key)
    assert stat is not None and stat.size == 11


async def test_put_leaves_no_temp_file_when_stream_fails(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path)

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await storage.put(broken())
    assert await storage.temp_files() == []
    assert [p for p in (tmp_path / "objects").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "key", ["../outside", "/etc/passwd", "objects/../../x", "", "a\x00b", "..", "a\\b"]
)
def test_path_refuses_keys_that_leave_the_root_when_hostile(tmp_path: Path, key: str) -> None:
    storage = FileSystemStorage(tmp_path / "root")
    with pytest.raises(StorageError):
        storage.path(key)


async def test_link_points_at_object_and_is_idempotent_when_repeated(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path)
    stored = await storage.put(chunks(b"abc"))
    for _ in range(2):
        await storage.folders.link(stored.key, "media/clusters/c1/photo.jpg")
    link = tmp_path / "media/clusters/c1/photo.jpg"
    assert link.is_symlink() and link.read_bytes() == b"abc"
    assert not os.path.isabs(os.readlink(link))  # relative: the tree can be moved
    with pytest.raises(StorageError):
        await storage.folders.link(stored.key, "../escape")
    await storage.folders.delete("media/clusters/c1/photo.jpg")
    assert not link.exists() and storage.path(stored.key).exists()


async def test_stale_temp_files_are_removed_when_old(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path)
    old = tmp_path / "tmp" / "old.part"
    new = tmp_path / "tmp" / "new.part"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert (await storage.remove_stale_temp(older_than=3600)).files == 1
    assert not old.exists() and new.exists()


async def test_a_decoders_link_to_an_old_object_is_not_swept_while_it_is_read(
    tmp_path: Path,
) -> None:
    storage = FileSystemStorage(tmp_path)
    stored = await storage.put(chunks(b"an object stored long ago"))
    path = storage.path(stored.key)
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    async with storage.local_file(stored.key) as link:
        assert link.parent == tmp_path / "tmp" and link.stat().st_mtime < time.time() - 3600
        assert (await storage.remove_stale_temp(older_than=3600)).files == 0
        assert link.read_bytes() == b"an object stored long ago"
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_put_refreshes_the_stored_copy_when_the_same_bytes_come_again(
    tmp_path: Path,
) -> None:
    storage = FileSystemStorage(tmp_path)
    stored = await storage.put(chunks(b"same"))
    path = storage.path(stored.key)
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    inode = path.stat().st_ino
    await storage.put(chunks(b"same"))
    assert path.stat().st_ino == inode  # kept, never rewritten
    assert path.stat().st_mtime > time.time() - 60  # but the sweeper's age bound starts again


async def test_ensure_placed_links_the_content_again_when_it_was_removed_after_commit(
    tmp_path: Path,
) -> None:
    storage = FileSystemStorage(tmp_path)
    writer = storage.writer()
    await writer.write(b"placed, then swept before its row committed")
    stored = await writer.commit()
    path = storage.path(stored.key)
    path.unlink()
    await writer.ensure_placed()
    assert path.read_bytes() == b"placed, then swept before its row committed"
    await writer.abort()
    assert await storage.temp_files() == [] and path.exists()


async def test_remove_orphan_keeps_an_object_when_it_was_refreshed_after_the_cutoff(
    tmp_path: Path,
) -> None:
    storage = FileSystemStorage(tmp_path)
    stored = await storage.put(chunks(b"orphan"))
    assert not await storage.remove_orphan(stored.key, time.time() - 3600)
    assert storage.path(stored.key).read_bytes() == b"orphan"
    assert await storage.remove_orphan(stored.key, time.time() + 1)
    assert not storage.path(stored.key).exists()
    assert list((tmp_path / "tmp").iterdir()) == []
