"""Content storage, the one port every service reads and writes bytes through.

Bytes are stored once, immutably, under a name derived from their sha256 (`key_for`). Two
backends: `filesystem` (STORAGE_PATH, one machine or a shared volume) and `s3` (any
S3-compatible object store, for replicas on many nodes). Nothing outside this package
builds a path or a URL into the store: decoders get a temporary local file from `local_file`
(a hard link in tmp/ on a filesystem, a download with S3), the gateway streams `open`
with ranges, the sweeper lists and removes through the port.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from common.settings import CommonSettings

SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")
PREFIX_NAME = re.compile(r"^[0-9a-f]{2}$")
HEAD_BYTES = 8192


class StorageError(Exception):
    """A storage operation was refused (an invalid key, say)."""


class StorageUnavailable(StorageError):
    """The store could not be reached or did not accept the operation now; retry later."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ObjectStat:
    size: int
    modified: float


@dataclass(frozen=True)
class Capacity:
    """Free and total bytes, where the backend has such a thing (None: unbounded or unknown)."""

    free: int | None
    total: int | None


@dataclass(frozen=True)
class TempSwept:
    """What a sweep of abandoned uploads removed: temp files or objects, and (S3) multipart
    uploads never completed."""

    files: int
    uploads: int = 0


class Writer(Protocol):
    """An upload in progress: bytes stream to the store while their sha256 is computed."""

    head: bytes
    size: int

    @property
    def sha256(self) -> str: ...
    async def write(self, chunk: bytes) -> None: ...
    async def commit(self) -> StoredObject: ...
    async def ensure_placed(self) -> None: ...
    async def abort(self) -> None: ...


class FolderLinks(Protocol):
    """Cluster folders as links to stored objects (the filesystem backend only)."""

    async def link(self, key: str, link_path: str) -> None: ...
    async def delete(self, link_path: str) -> None: ...
    async def list_folder(self, folder: str) -> list[str]: ...
    async def delete_folder(self, folder: str) -> None: ...
    async def subfolders(self, folder: str) -> list[str]: ...


class Storage(Protocol):
    """Where content bytes live."""

    backend: str
    # A local folder for the process's own temporary files (search images, downloads).
    scratch_dir: Path

    @property
    def folders(self) -> FolderLinks | None:
        """Cluster folders as links (filesystem); None where folders are a listing through
        the API only (object storage keeps no marker objects)."""

    def writer(self) -> Writer: ...
    async def put(self, chunks: AsyncIterable[bytes]) -> StoredObject: ...
    def open(
        self, key: str, *, start: int = 0, length: int | None = None, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]: ...
    async def read(self, key: str, *, limit: int) -> bytes: ...
    def local_file(self, key: str) -> AbstractAsyncContextManager[Path]: ...
    async def stat(self, key: str) -> ObjectStat | None: ...
    async def delete(self, key: str) -> None: ...
    async def read_url(
        self, key: str, *, expires: int, content_type: str, disposition: str | None = None
    ) -> str | None: ...
    async def capacity(self) -> Capacity: ...
    async def writable(self) -> bool: ...
    def describe(self) -> dict[str, str]: ...
    async def close(self) -> None: ...
    # The sweeper's (gateway/sweep.py) and the backup's view of what is stored.
    async def remove_stale_temp(self, older_than: float) -> TempSwept: ...
    async def object_prefixes(self) -> list[str]: ...
    async def objects_older_than(self, prefix: str, cutoff: float) -> list[str]: ...
    async def remove_orphan(self, key: str, cutoff: float) -> bool: ...
    async def temp_files(self) -> list[str]: ...


def key_for(sha256: str) -> str:
    """The storage key of content with this hash."""
    if not SHA256_NAME.match(sha256):
        raise StorageError("not a sha256 hex digest")
    return f"objects/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def check_key(key: str) -> list[str]:
    """The parts of a relative storage key; refuses anything that could name a place
    outside the store (empty, `.` or `..` parts, backslashes, NUL, control characters)."""
    parts = key.split("/")
    if (
        not key
        or "\\" in key
        or any(ord(c) < 32 or c == "\x7f" for c in key)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise StorageError(f"invalid storage key: {key!r}")
    return parts


def is_object_key(key: str, prefix: str) -> bool:
    """Whether `key` is a content key (`key_for`) under objects/<prefix>/."""
    parts = key.split("/")
    return (
        len(parts) == 4
        and parts[0] == "objects"
        and SHA256_NAME.match(parts[3]) is not None
        and parts[1] == prefix == parts[3][:2]
        and parts[2] == parts[3][2:4]
    )


async def put_through(writer: Writer, chunks: AsyncIterable[bytes]) -> StoredObject:
    """Store a stream with a fresh writer: written, committed, given its name; what the
    writer left besides the content (temp files, parts) removed whatever happens."""
    try:
        async for chunk in chunks:
            await writer.write(chunk)
        stored = await writer.commit()
        await writer.ensure_placed()
        return stored
    finally:
        await writer.abort()


async def chunks_of(data: bytes, size: int = 262144) -> AsyncIterator[bytes]:
    """Bytes as the async stream `Storage.put` takes."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def open_storage(settings: CommonSettings, *, fsync: bool = True) -> Storage:
    """The configured storage backend (STORAGE_BACKEND)."""
    if settings.storage_backend == "s3":
        from common.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    if settings.storage_backend != "filesystem":
        raise StorageError(f"unsupported storage backend: {settings.storage_backend}")
    from common.storage.filesystem import FileSystemStorage

    return FileSystemStorage(settings.storage_path, fsync=fsync)
