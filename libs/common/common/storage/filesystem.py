"""The filesystem backend (STORAGE_PATH): objects/, tmp/, and cluster folders of links."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from stat import S_ISREG

from common.storage import (
    HEAD_BYTES,
    PREFIX_NAME,
    SHA256_NAME,
    Capacity,
    ObjectStat,
    StorageError,
    StoredObject,
    TempSwept,
    check_key,
    key_for,
    put_through,
)
from common.storage.metrics import OBJECTS_WRITTEN

# tmp/<uuid>.read: a decoder's name for a stored object (`local_file`).
READ_SUFFIX = ".read"


class FileWriter:
    """Streams to a temp file under the storage root; commit links it under its content name.

    The temp file stays (a second name for the same bytes) until `abort`, so that
    `ensure_placed` can give the content its name again if the storage sweeper removed it
    as an orphan before the caller's row committed.
    """

    def __init__(self, storage: FileSystemStorage) -> None:
        self._storage = storage
        self._hash = hashlib.sha256()
        self.temp_path = storage.root / "tmp" / f"{uuid.uuid4().hex}.part"
        self._file = open(self.temp_path, "xb")
        self._final: Path | None = None
        self.head = b""
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        # Small writes to the page cache; the fsync happens once, off the loop, in commit.
        self._file.write(chunk)
        self._hash.update(chunk)
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        """The hash of everything written so far."""
        return self._hash.hexdigest()

    async def commit(self) -> StoredObject:
        sha256 = self.sha256
        key = key_for(sha256)
        self._file.flush()
        try:
            final = await asyncio.to_thread(self._storage._place, self._file, self.temp_path, key)
        except BaseException:
            self._remove_temp()
            raise
        self._final = final
        return StoredObject(key, sha256, self.size)

    async def ensure_placed(self) -> None:
        """Give the committed content its name again if it went missing since `commit`.

        Call it holding the object's lock (see gateway/sweep.py): the sweeper removes an
        object only under that lock, so once this returns the name stays until the lock is
        released, by then with the caller's row committed.
        """
        if self._final is None:
            raise StorageError("ensure_placed before commit")
        # One stat of a name just placed (in the dentry cache): cheaper than a thread hop.
        if not os.path.exists(self._final):  # noqa: ASYNC240
            await asyncio.to_thread(self._storage._link_content, self.temp_path, self._final)

    async def abort(self) -> None:
        """Remove the temp file; content placed by `commit` stays."""
        self._remove_temp()

    def _remove_temp(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.temp_path.unlink(missing_ok=True)


class FileSystemStorage:
    """The filesystem backend (STORAGE_PATH): objects/, tmp/, and folder links."""

    backend = "filesystem"

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self.scratch_dir = self.root / "tmp"
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self.folders = FolderLinksOnDisk(self)

    def writer(self) -> FileWriter:
        return FileWriter(self)

    async def put(self, chunks: AsyncIterable[bytes]) -> StoredObject:
        return await put_through(self.writer(), chunks)

    def _place(self, file: object, temp_path: Path, key: str) -> Path:
        """Make the temp file durable and give it its content name (runs in a thread)."""
        assert isinstance(file, io.BufferedWriter)
        if self.fsync:
            os.fsync(file.fileno())
        file.close()
        os.chmod(temp_path, 0o444)
        final = self.path(key)
        self._link_content(temp_path, final)
        return final

    def _link_content(self, temp_path: Path, final: Path) -> None:
        """Link the temp file under its content name, unless the same content is there."""
        try:
            # Stored already: keep the first copy, never rewrite it. Its mtime is refreshed
            # so the sweeper's age bound also covers an orphan that someone relies on again.
            os.utime(final)
            OBJECTS_WRITTEN.labels("filesystem", "present").inc()
            return
        except FileNotFoundError:
            pass
        except PermissionError:  # another owner's copy: keep it as it is
            OBJECTS_WRITTEN.labels("filesystem", "present").inc()
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(temp_path, final)  # atomic; never replaces a copy placed meanwhile
        except FileExistsError:
            OBJECTS_WRITTEN.labels("filesystem", "present").inc()
            return  # a concurrent twin placed identical bytes first
        OBJECTS_WRITTEN.labels("filesystem", "stored").inc()
        if self.fsync:
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def path(self, key: str) -> Path:
        """The absolute path of a key; refuses anything that would leave the root.

        The last component is not resolved, so a folder link is addressed as itself, never
        as the object it points at. Only this backend (and its folder links) uses it.
        """
        candidate = self.root.joinpath(*check_key(key))
        parent = candidate.parent.resolve()
        if not parent.is_relative_to(self.root):
            raise StorageError(f"storage key leaves the root: {key!r}")
        return parent / candidate.name

    async def open(
        self, key: str, *, start: int = 0, length: int | None = None, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        path = self.path(key)
        left = length
        with path.open("rb") as handle:
            if start:
                handle.seek(start)
            while left is None or left > 0:
                size = chunk_size if left is None else min(chunk_size, left)
                chunk = await asyncio.to_thread(handle.read, size)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk

    async def read(self, key: str, *, limit: int) -> bytes:
        path = self.path(key)

        def read() -> bytes:
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
            if len(data) > limit:
                raise StorageError(f"{key} is larger than {limit} bytes")
            return data

        return await asyncio.to_thread(read)

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        """A temporary name for the object in tmp/ (a hard link: no bytes copied), removed
        when the block ends. Never the object's own path: the bytes stay readable under it
        even if the content is purged or swept meanwhile."""
        source = self.path(key)
        # Named after the object, so a decoder's error still says which content it was.
        link = self.scratch_dir / f"{source.name}.{uuid.uuid4().hex[:8]}{READ_SUFFIX}"
        try:
            await asyncio.to_thread(os.link, source, link)
        except FileNotFoundError:
            raise FileNotFoundError(f"no stored object {key}") from None
        try:
            yield link
        finally:
            link.unlink(missing_ok=True)

    async def stat(self, key: str) -> ObjectStat | None:
        try:
            result = await asyncio.to_thread(self.path(key).stat)
        except FileNotFoundError:
            return None
        return ObjectStat(result.st_size, result.st_mtime)

    async def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)

    async def read_url(
        self, key: str, *, expires: int, content_type: str, disposition: str | None = None
    ) -> str | None:
        return None  # the gateway serves the bytes itself

    async def capacity(self) -> Capacity:
        usage = await asyncio.to_thread(shutil.disk_usage, self.root)
        return Capacity(usage.free, usage.total)

    async def writable(self) -> bool:
        return await asyncio.to_thread(self._writable)

    def _writable(self) -> bool:
        probe = self.root / "tmp" / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            return False
        return True

    def describe(self) -> dict[str, str]:
        return {"path": str(self.root)}

    async def close(self) -> None:
        return None

    async def remove_stale_temp(self, older_than: float) -> TempSwept:
        """Delete temp files not written for `older_than` seconds (left by a crash or a
        killed process)."""
        return TempSwept(await asyncio.to_thread(self._remove_stale_temp, older_than))

    def _remove_stale_temp(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for entry in os.scandir(self.root / "tmp"):
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
                # A read link has its object's mtime; its ctime is when a link to the object
                # was last made or removed, so an old one was left by a killed process.
                stamp = info.st_ctime if entry.name.endswith(READ_SUFFIX) else info.st_mtime
                if stamp < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    async def object_prefixes(self) -> list[str]:
        """The first-level folders of objects/ (the `ab` of objects/ab/cd/<sha256>)."""

        def prefixes() -> list[str]:
            return sorted(
                entry.name
                for entry in os.scandir(self.root / "objects")
                if entry.is_dir(follow_symlinks=False) and PREFIX_NAME.match(entry.name)
            )

        return await asyncio.to_thread(prefixes)

    async def objects_older_than(self, prefix: str, cutoff: float) -> list[str]:
        """Keys of the objects under objects/<prefix>/ last modified before `cutoff`.

        Only regular files named as `key_for` names them; anything else is left alone.
        """
        return await asyncio.to_thread(self._objects_older_than, prefix, cutoff)

    def _objects_older_than(self, prefix: str, cutoff: float) -> list[str]:
        keys = []
        for folder in os.scandir(self.root / "objects" / prefix):
            if not folder.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(folder.path):
                name = entry.name
                if not (
                    SHA256_NAME.match(name) and name[:2] == prefix and name[2:4] == folder.name
                ):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    keys.append(key_for(name))
        return keys

    async def remove_orphan(self, key: str, cutoff: float) -> bool:
        """Remove an object no row refers to, unless it was placed or refreshed after
        `cutoff`; True when it was removed. Call it holding the object's lock.

        The object is moved aside first and its age read from the moved file, so a writer
        that refreshed it (see `_link_content`) before the move is seen and the object goes
        back, and one that comes after the move finds no object and places its own.
        """
        return await asyncio.to_thread(self._remove_orphan, key, cutoff)

    def _remove_orphan(self, key: str, cutoff: float) -> bool:
        final = self.path(key)
        aside = self.root / "tmp" / f"{final.name}.{uuid.uuid4().hex}.swept"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return False
        try:
            if os.lstat(aside).st_mtime < cutoff:
                return True
            with contextlib.suppress(FileExistsError):
                os.link(aside, final)
            return False
        finally:
            aside.unlink(missing_ok=True)

    async def temp_files(self) -> list[str]:
        """Uploads in progress (tests use this to prove nothing is left behind)."""
        return sorted(p.name for p in (self.root / "tmp").iterdir() if p.name.endswith(".part"))


class FolderLinksOnDisk:
    """Cluster folders as relative symlinks to the stored objects."""

    def __init__(self, storage: FileSystemStorage) -> None:
        self._storage = storage

    async def link(self, key: str, link_path: str) -> None:
        """Point `link_path` (relative to the root) at the object; idempotent and atomic."""
        path = self._storage.path
        await asyncio.to_thread(self._link, path(key), path(link_path))

    @staticmethod
    def _link(target: Path, link: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        temp = link.with_name(f".{link.name}.{uuid.uuid4().hex}.tmp")
        os.symlink(os.path.relpath(target, link.parent), temp)
        os.replace(temp, link)

    async def delete(self, link_path: str) -> None:
        path = self._storage.path(link_path)
        if path.is_symlink():
            path.unlink(missing_ok=True)

    async def list_folder(self, folder: str) -> list[str]:
        """Names of the links directly in a folder (not sub-folders); empty when absent."""
        path = self._storage.path(folder)

        def names() -> list[str]:
            try:
                return sorted(
                    entry.name
                    for entry in os.scandir(path)
                    if entry.is_symlink() and not entry.name.startswith(".")
                )
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(names)

    async def subfolders(self, folder: str) -> list[str]:
        """Names of the folders directly in a folder; empty when absent."""
        path = self._storage.path(folder)

        def names() -> list[str]:
            try:
                return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(names)

    async def delete_folder(self, folder: str) -> None:
        """Remove a folder of links (links only: rmtree never follows them)."""
        path = self._storage.path(folder)
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
