"""Content storage: bytes stored once, immutably, under a name derived from their sha256."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Protocol

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PREFIX = re.compile(r"^[0-9a-f]{2}$")
HEAD_BYTES = 8192


class StorageError(Exception):
    """A storage operation failed or was refused."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ObjectStat:
    size: int
    modified: float


class Writer(Protocol):
    """An upload in progress: bytes go to a temporary file while the sha256 is computed."""

    head: bytes
    size: int

    @property
    def sha256(self) -> str: ...
    def write(self, chunk: bytes) -> None: ...
    async def commit(self) -> StoredObject: ...
    async def ensure_placed(self) -> None: ...
    def abort(self) -> None: ...


class Storage(Protocol):
    """Where content bytes live."""

    backend: str

    def writer(self) -> Writer: ...
    async def put(self, chunks: AsyncIterable[bytes]) -> StoredObject: ...
    def open(self, key: str, chunk_size: int = 65536) -> AsyncIterator[bytes]: ...
    def path(self, key: str) -> Path: ...
    async def link(self, key: str, link_path: str) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def list_folder(self, folder: str) -> list[str]: ...
    async def delete_folder(self, folder: str) -> None: ...
    async def stat(self, key: str) -> ObjectStat | None: ...
    def free_bytes(self) -> int: ...
    def total_bytes(self) -> int: ...
    def writable(self) -> bool: ...


def key_for(sha256: str) -> str:
    """The storage key of content with this hash."""
    if not _SHA256.match(sha256):
        raise StorageError("not a sha256 hex digest")
    return f"objects/{sha256[:2]}/{sha256[2:4]}/{sha256}"


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

    def write(self, chunk: bytes) -> None:
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
            self.abort()
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

    def abort(self) -> None:
        """Remove the temp file; content placed by `commit` stays."""
        if not self._file.closed:
            self._file.close()
        self.temp_path.unlink(missing_ok=True)


class FileSystemStorage:
    """The filesystem backend (STORAGE_PATH): objects/, tmp/, and folder links."""

    backend = "filesystem"

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)

    def writer(self) -> FileWriter:
        return FileWriter(self)

    async def put(self, chunks: AsyncIterable[bytes]) -> StoredObject:
        writer = self.writer()
        try:
            async for chunk in chunks:
                writer.write(chunk)
            return await writer.commit()
        finally:
            writer.abort()

    def _place(self, file: object, temp_path: Path, key: str) -> Path:
        """Make the temp file durable and give it its content name (runs in a thread)."""
        import io

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
            return
        except FileNotFoundError:
            pass
        except PermissionError:  # another owner's copy: keep it as it is
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(temp_path, final)  # atomic; never replaces a copy placed meanwhile
        except FileExistsError:
            return  # a concurrent twin placed identical bytes first
        if self.fsync:
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def path(self, key: str) -> Path:
        """The absolute path of a key; refuses anything that would leave the root.

        The last component is not resolved, so a folder link is addressed as itself, never
        as the object it points at.
        """
        parts = key.split("/")
        if (
            not key
            or "\\" in key
            or "\x00" in key
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise StorageError(f"invalid storage key: {key!r}")
        candidate = self.root.joinpath(*parts)
        parent = candidate.parent.resolve()
        if not parent.is_relative_to(self.root):
            raise StorageError(f"storage key leaves the root: {key!r}")
        return parent / candidate.name

    async def open(self, key: str, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        path = self.path(key)
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk

    async def link(self, key: str, link_path: str) -> None:
        """Point `link_path` (relative to the root) at the object; idempotent and atomic."""
        await asyncio.to_thread(self._link, self.path(key), self.path(link_path))

    @staticmethod
    def _link(target: Path, link: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        temp = link.with_name(f".{link.name}.{uuid.uuid4().hex}.tmp")
        os.symlink(os.path.relpath(target, link.parent), temp)
        os.replace(temp, link)

    async def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)

    async def list_folder(self, folder: str) -> list[str]:
        """Names of the links directly in a folder (not sub-folders); empty when absent."""
        path = self.path(folder)

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

    async def delete_folder(self, folder: str) -> None:
        """Remove a folder of links (links only: rmtree never follows them)."""
        path = self.path(folder)
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    async def stat(self, key: str) -> ObjectStat | None:
        try:
            result = self.path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectStat(result.st_size, result.st_mtime)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def total_bytes(self) -> int:
        return shutil.disk_usage(self.root).total

    def writable(self) -> bool:
        probe = self.root / "tmp" / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            return False
        return True

    def remove_stale_temp(self, older_than: float = 3600.0) -> int:
        """Delete temp files not written for `older_than` seconds (left by a crash or a
        killed process); returns how many were removed."""
        cutoff = time.time() - older_than
        removed = 0
        for entry in os.scandir(self.root / "tmp"):
            try:
                if (
                    entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < cutoff
                ):
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def object_prefixes(self) -> list[str]:
        """The first-level folders of objects/ (the `ab` of objects/ab/cd/<sha256>)."""
        return sorted(
            entry.name
            for entry in os.scandir(self.root / "objects")
            if entry.is_dir(follow_symlinks=False) and _PREFIX.match(entry.name)
        )

    def objects_older_than(self, prefix: str, cutoff: float) -> list[str]:
        """Keys of the objects under objects/<prefix>/ last modified before `cutoff`.

        Only regular files named as `key_for` names them; anything else is left alone.
        """
        keys = []
        for folder in os.scandir(self.root / "objects" / prefix):
            if not folder.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(folder.path):
                name = entry.name
                if not (_SHA256.match(name) and name[:2] == prefix and name[2:4] == folder.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    keys.append(key_for(name))
        return keys

    def remove_orphan(self, key: str, cutoff: float) -> bool:
        """Remove an object no row refers to, unless it was placed or refreshed after
        `cutoff`; True when it was removed. Call it holding the object's lock.

        The object is moved aside first and its age read from the moved file, so a writer
        that refreshed it (see `_link_content`) before the move is seen and the object goes
        back, and one that comes after the move finds no object and places its own.
        """
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

    def temp_files(self) -> list[Path]:
        """Uploads in progress (tests use this to prove nothing is left behind)."""
        return [p for p in (self.root / "tmp").iterdir() if p.name.endswith(".part")]


def open_storage(backend: str, path: Path, *, fsync: bool = True) -> FileSystemStorage:
    """The configured storage backend."""
    if backend != "filesystem":
        raise StorageError(f"unsupported storage backend: {backend}")
    return FileSystemStorage(path, fsync=fsync)
