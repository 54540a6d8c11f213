"""The S3 backend (STORAGE_BACKEND=s3): any S3-compatible object store, through aiobotocore.

Layout under S3_PREFIX in S3_BUCKET: `objects/ab/cd/<sha256>` (content, immutable) and
`tmp/<uuid>.part` (large uploads until they have their content name). No cluster folders:
with object storage a folder is a listing through the API (GET /api/v1/clusters/{id}), so
no marker objects exist to drift from the database.

Content-addressed writes without a race. The hash is known only once the bytes have
streamed through, so the content gets its name in `ensure_placed`, which the gateway calls
holding the object's lock (the per-sha256 advisory lock the sweeper takes too):
- an upload that fits in one part (S3_PART_SIZE_BYTES) is held in memory and PUT under
  its content name with `If-None-Match: *` (and its sha256 as the server-checked checksum):
  of two racing writers one stores it, the other is told it is there (412); one request;
- a larger one streams as a multipart upload to a temporary key (each part's CRC32 checked
  by the server) and is then copied to its content name: a HEAD, then a copy if it is
  absent, so it is written once even on servers that ignore conditions on a copy.

The temporary object goes when the upload ends, whatever happened; one left by a killed
process (or a multipart upload never completed) goes with the sweeper (`remove_stale_temp`,
gateway/sweep.py).

Retries with backoff on 5xx, throttling and dropped connections are botocore's ("standard"
mode, S3_MAX_ATTEMPTS); what still fails raises StorageUnavailable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import tempfile
import time
import uuid
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from common.storage import (
    HEAD_BYTES,
    PREFIX_NAME,
    Capacity,
    ObjectStat,
    StorageError,
    StorageUnavailable,
    StoredObject,
    TempSwept,
    check_key,
    is_object_key,
    key_for,
    put_through,
)
from common.storage.metrics import OBJECTS_WRITTEN

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from common.settings import CommonSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# A conditional write that found the key taken (or raced another conditional write to it).
_EXISTS = frozenset({"412", "PreconditionFailed", "409", "ConditionalRequestConflict"})
# What S3 allows in one CopyObject; larger objects would need a multipart copy.
MAX_COPY_BYTES = 5 * 1024**3
PROBE_SECONDS = 3.0


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class _Exists(Exception):
    """A conditional write found its key taken."""


class _PastTheEnd(Exception):
    """A range that starts at or after the object's end (an empty object's any range)."""


async def _call(what: str, call: Awaitable[T], *, conditional: bool = False) -> T:
    """An S3 call, with what still fails after botocore's retries as StorageUnavailable
    (a missing key as FileNotFoundError, a conditional write's key taken as _Exists)."""
    try:
        return await call
    except ClientError as error:
        if _code(error) in _MISSING:
            raise FileNotFoundError(what) from None
        if conditional and _code(error) in _EXISTS:
            raise _Exists(what) from None
        if _code(error) == "InvalidRange":
            raise _PastTheEnd(what) from None
        raise StorageUnavailable(f"S3 {what}: {_code(error) or error}") from error
    except (BotoCoreError, aiohttp.ClientError, TimeoutError) as error:
        raise StorageUnavailable(f"S3 {what}: {type(error).__name__}: {error}") from error


class S3Writer:
    """One upload: held in memory up to one part, then streamed as a multipart upload."""

    def __init__(self, storage: S3Storage) -> None:
        self._s = storage
        self._hash = hashlib.sha256()
        self.head = b""
        self.size = 0
        self._buffer = bytearray()
        # The start time is in the name: the sweeper ages an upload by it (some servers
        # report no real initiation time for multipart uploads).
        self._temp = f"tmp/{time.time_ns() // 1_000_000}-{uuid.uuid4().hex}.part"
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._sending: asyncio.Task[dict[str, Any]] | None = None
        self._temp_complete = False
        self._small: bytes | None = None
        self._final: str | None = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self.size += len(chunk)
        self._buffer += chunk
        if len(self._buffer) >= self._s.part_size:
            await self._send_part()

    async def _send_part(self) -> None:
        """Send the buffer as the next part; one part travels while the next one fills."""
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._upload_id is None:
            self._upload_id = await self._s._create_multipart(self._temp)
        await self._sent()
        number = len(self._parts) + 1
        self._sending = asyncio.ensure_future(
            self._s._upload_part(self._temp, self._upload_id, number, data)
        )

    async def _sent(self) -> None:
        if self._sending is not None:
            task, self._sending = self._sending, None
            self._parts.append(await task)

    async def commit(self) -> StoredObject:
        sha256 = self.sha256
        key = key_for(sha256)
        try:
            if self._upload_id is None:  # stored by ensure_placed, with one conditional PUT
                self._small = bytes(self._buffer)
                self._buffer = bytearray()
            else:
                if self.size > MAX_COPY_BYTES:
                    raise StorageError(f"uploads over {MAX_COPY_BYTES} bytes are not supported")
                if self._buffer:
                    await self._send_part()
                await self._sent()
                await self._s._complete(self._temp, self._upload_id, self._parts)
                self._temp_complete = True
        except BaseException:
            await self.abort()
            raise
        self._final = key
        return StoredObject(key, sha256, self.size)

    async def ensure_placed(self) -> None:
        """Give the content its name unless it has one; call it holding the object's lock
        (the gateway does), so that what it finds or writes stays until the rows commit.

        One part: a PUT with If-None-Match (412: stored already) — one request, whether the
        sweeper took an old copy or not. More: a HEAD, then a copy from the temporary
        object if the name is free (the lock makes it one copy on any server)."""
        if self._final is None:
            raise StorageError("ensure_placed before commit")
        if self._small is not None:
            await self._s._put_new(self._final, self._small, self.sha256)
            return
        # The object's lock is per transaction, and one group commit can carry two uploads
        # of the same bytes: within the process, one at a time per name too.
        async with self._s._naming(self._final):
            if await self._s.stat(self._final) is not None:
                OBJECTS_WRITTEN.labels("s3", "present").inc()
            else:
                await self._s._copy(self._temp, self._final)

    async def abort(self) -> None:
        """Remove what this upload left in the store but its content; never raises (what it
        cannot remove now, the sweeper removes later)."""
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(BaseException):
                await sending
        try:
            if self._temp_complete:
                self._temp_complete = False
                await self._s.delete(self._temp)
            elif self._upload_id is not None:
                upload_id, self._upload_id = self._upload_id, None
                await self._s._abort_multipart(self._temp, upload_id)
        except (StorageUnavailable, FileNotFoundError) as error:
            log.warning("upload left for the sweeper", key=self._temp, error=str(error))
        finally:
            self._small = None


class S3Storage:
    """Content in an S3 bucket, under a prefix."""

    backend = "s3"
    folders: None = None

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        part_size: int = 8 * 1024 * 1024,
        max_attempts: int = 5,
        conditional_writes: bool = True,
        addressing_style: str = "auto",
        scratch_dir: Path | None = None,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix:
            check_key(prefix[:-1])
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self.conditional_writes = conditional_writes
        if addressing_style == "auto" and endpoint_url:
            addressing_style = "path"  # what S3-compatible servers take everywhere
        self._config = AioConfig(
            region_name=region,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            s3={"addressing_style": addressing_style},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            request_checksum_calculation="when_required",
            # A copy of a multipart upload carries a composite checksum some servers report
            # wrongly for the whole object; content is checked by its sha256 name instead.
            response_checksum_validation="when_required",
        )
        self.scratch_dir = scratch_dir or Path(tempfile.gettempdir())
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None
        self._opening: asyncio.Lock | None = None
        self._names: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> S3Storage:
        return cls(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            part_size=settings.s3_part_size_bytes,
            max_attempts=settings.s3_max_attempts,
            conditional_writes=settings.s3_conditional_writes,
            addressing_style=settings.s3_addressing_style,
            scratch_dir=settings.storage_scratch_dir,
        )

    async def _s3(self) -> S3Client:
        if self._client is None:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if self._client is None:
                    # Credentials: botocore's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
                    # AWS_SHARED_CREDENTIALS_FILE for a mounted secret, web identity, ...).
                    creator = get_session().create_client(
                        "s3", endpoint_url=self.endpoint_url, config=self._config
                    )
                    self._client = await self._stack.enter_async_context(creator)
        assert self._client is not None
        return self._client

    def _naming(self, key: str) -> asyncio.Lock:
        """This process's lock on giving `key` its object (see S3Writer.ensure_placed)."""
        lock = self._names.get(key)
        if lock is None:
            lock = self._names[key] = asyncio.Lock()
        return lock

    def _k(self, key: str) -> str:
        return self.prefix + "/".join(check_key(key))

    async def _do(self, what: str, call: Callable[[S3Client], Awaitable[T]]) -> T:
        client = await self._s3()
        return await _call(what, call(client))

    # -- writing --------------------------------------------------------------------------

    def writer(self) -> S3Writer:
        return S3Writer(self)

    async def put(self, chunks: AsyncIterable[bytes]) -> StoredObject:
        return await put_through(self.writer(), chunks)

    async def _put_new(self, key: str, data: bytes, sha256: str) -> None:
        """PUT content under its name unless it is there; counted as stored or present."""
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        name = self._k(key)
        if not self.conditional_writes and await self.stat(key) is not None:
            OBJECTS_WRITTEN.labels("s3", "present").inc()
            return
        client = await self._s3()
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if self.conditional_writes else {}
        call = client.put_object(
            Bucket=self.bucket, Key=name, Body=data, ChecksumSHA256=checksum, **extra
        )
        try:
            await _call(f"put {key}", call, conditional=True)
        except _Exists:
            OBJECTS_WRITTEN.labels("s3", "present").inc()
            return
        OBJECTS_WRITTEN.labels("s3", "stored").inc()

    async def _copy(self, temp: str, key: str) -> None:
        await self._do(
            f"copy to {key}",
            lambda c: c.copy_object(
                Bucket=self.bucket,
                Key=self._k(key),
                CopySource={"Bucket": self.bucket, "Key": self._k(temp)},
            ),
        )
        OBJECTS_WRITTEN.labels("s3", "stored").inc()

    async def _create_multipart(self, temp: str) -> str:
        answer = await self._do(
            "start a multipart upload",
            lambda c: c.create_multipart_upload(
                Bucket=self.bucket, Key=self._k(temp), ChecksumAlgorithm="CRC32"
            ),
        )
        return answer["UploadId"]

    async def _upload_part(
        self, temp: str, upload_id: str, number: int, data: bytes
    ) -> dict[str, Any]:
        answer = await self._do(
            f"upload part {number}",
            lambda c: c.upload_part(
                Bucket=self.bucket,
                Key=self._k(temp),
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="CRC32",
            ),
        )
        return {
            "PartNumber": number,
            "ETag": answer["ETag"],
            "ChecksumCRC32": answer["ChecksumCRC32"],
        }

    async def _complete(self, temp: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        await self._do(
            "complete a multipart upload",
            lambda c: c.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self._k(temp),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            ),
        )

    async def _abort_multipart(self, temp: str, upload_id: str) -> None:
        await self._do(
            "abort a multipart upload",
            lambda c: c.abort_multipart_upload(
                Bucket=self.bucket, Key=self._k(temp), UploadId=upload_id
            ),
        )

    # -- reading --------------------------------------------------------------------------

    async def open(
        self, key: str, *, start: int = 0, length: int | None = None, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        extra: dict[str, Any] = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            extra["Range"] = f"bytes={start}-{end}"
        try:
            answer = await self._do(
                f"get {key}",
                lambda c: c.get_object(Bucket=self.bucket, Key=self._k(key), **extra),
            )
        except _PastTheEnd:
            return  # nothing there: as a file read past its end
        async with answer["Body"] as body:
            while True:
                chunk = await _call(f"read {key}", body.read(chunk_size))
                if not chunk:
                    break
                yield chunk

    async def read(self, key: str, *, limit: int) -> bytes:
        data = bytearray()
        async for chunk in self.open(key, length=limit + 1):
            data += chunk
        if len(data) > limit:
            raise StorageError(f"{key} is larger than {limit} bytes")
        return bytes(data)

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        """A temporary local copy in `scratch_dir`, removed when the block ends."""
        # Named after the object, so a decoder's error still says which content it was.
        fd, name = tempfile.mkstemp(
            prefix=f"{check_key(key)[-1]}.", suffix=".download", dir=self.scratch_dir
        )
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                async for chunk in self.open(key, chunk_size=1024 * 1024):
                    await asyncio.to_thread(handle.write, chunk)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    async def stat(self, key: str) -> ObjectStat | None:
        try:
            answer = await self._do(
                f"head {key}", lambda c: c.head_object(Bucket=self.bucket, Key=self._k(key))
            )
        except FileNotFoundError:
            return None
        return ObjectStat(answer["ContentLength"], answer["LastModified"].timestamp())

    async def delete(self, key: str) -> None:
        await self._do(
            f"delete {key}", lambda c: c.delete_object(Bucket=self.bucket, Key=self._k(key))
        )

    async def read_url(
        self, key: str, *, expires: int, content_type: str, disposition: str | None = None
    ) -> str | None:
        """A presigned GET (signed here, no request made), with the type and disposition
        the gateway would have answered with."""
        client = await self._s3()
        params = {"Bucket": self.bucket, "Key": self._k(key), "ResponseContentType": content_type}
        if disposition:
            params["ResponseContentDisposition"] = disposition
        return await client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)

    # -- health ---------------------------------------------------------------------------

    async def capacity(self) -> Capacity:
        return Capacity(None, None)  # a bucket has no free space to speak of

    async def writable(self) -> bool:
        """A tiny object written and removed: reachable, credentials and bucket right."""
        probe = f"tmp/.probe-{uuid.uuid4().hex}"
        try:
            # Bounded: a store that does not answer must not hold a probe past its own limit.
            async with asyncio.timeout(PROBE_SECONDS):
                await self._do(
                    "probe",
                    lambda c: c.put_object(Bucket=self.bucket, Key=self._k(probe), Body=b""),
                )
                await self.delete(probe)
        except (StorageUnavailable, FileNotFoundError, TimeoutError) as error:
            log.warning("storage not writable", error=str(error))
            return False
        return True

    def describe(self) -> dict[str, str]:
        return {
            "endpoint": self.endpoint_url or "AWS",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
        }

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()

    # -- sweeping -------------------------------------------------------------------------

    async def _list(self, prefix: str, **extra: Any) -> AsyncIterator[dict[str, Any]]:
        """Pages of ListObjectsV2 under `prefix` (relative to S3_PREFIX)."""
        client = await self._s3()
        token: str | None = None
        while True:
            more: dict[str, Any] = {"ContinuationToken": token} if token else {}
            page = await _call(
                f"list {prefix}",
                client.list_objects_v2(
                    Bucket=self.bucket, Prefix=self.prefix + prefix, **extra, **more
                ),
            )
            yield dict(page)
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def _multipart_uploads(self) -> list[dict[str, Any]]:
        client = await self._s3()
        uploads: list[dict[str, Any]] = []
        markers: dict[str, Any] = {}
        while True:
            page = await _call(
                "list multipart uploads",
                client.list_multipart_uploads(
                    Bucket=self.bucket, Prefix=self.prefix + "tmp/", **markers
                ),
            )
            uploads.extend(dict(u) for u in page.get("Uploads", []))
            if not page.get("IsTruncated"):
                return uploads
            markers = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }

    async def remove_stale_temp(self, older_than: float) -> TempSwept:
        """Remove temp objects and abort multipart uploads older than `older_than` seconds
        (left by a killed gateway, or an abort that could not reach the store)."""
        limit = time.time() - older_than
        files = 0
        async for page in self._list("tmp/"):
            for item in page.get("Contents", []):
                temp = item["Key"][len(self.prefix) :]
                if _started(temp, item["LastModified"].timestamp()) < limit:
                    await self.delete(temp)
                    files += 1
        uploads = 0
        for upload in await self._multipart_uploads():
            temp = upload["Key"][len(self.prefix) :]
            if _started(temp, upload["Initiated"].timestamp()) < limit:
                with contextlib.suppress(FileNotFoundError):
                    await self._abort_multipart(temp, upload["UploadId"])
                uploads += 1
        return TempSwept(files, uploads)

    async def object_prefixes(self) -> list[str]:
        names: list[str] = []
        async for page in self._list("objects/", Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(self.prefix) + len("objects/") :].rstrip("/")
                if PREFIX_NAME.match(name):
                    names.append(name)
        return sorted(names)

    async def objects_older_than(self, prefix: str, cutoff: float) -> list[str]:
        keys: list[str] = []
        async for page in self._list(f"objects/{prefix}/"):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if is_object_key(key, prefix) and item["LastModified"].timestamp() < cutoff:
                    keys.append(key)
        return keys

    async def remove_orphan(self, key: str, cutoff: float) -> bool:
        """Remove an object no row refers to, unless it was stored after `cutoff`. Call it
        holding the object's lock: every writer that relies on an object it found stored
        checks again under that lock (`ensure_placed`) and stores it again if it is gone."""
        found = await self.stat(key)
        if found is None or found.modified >= cutoff:
            return False
        await self.delete(key)
        return True

    async def temp_files(self) -> list[str]:
        """Temp objects and multipart uploads not completed (tests: nothing left behind)."""
        names = [
            item["Key"][len(self.prefix) :]
            async for page in self._list("tmp/")
            for item in page.get("Contents", [])
            if not item["Key"][len(self.prefix) :].startswith("tmp/.probe-")  # /ready's
        ]
        names += [
            f"multipart:{u['Key'][len(self.prefix) :]}" for u in await self._multipart_uploads()
        ]
        return sorted(names)


def _started(temp: str, reported: float) -> float:
    """When an upload to `temp` began: the later of the time in its name (S3Writer names it
    so) and what the server reports, so neither a server's odd clock nor a foreign name
    makes an upload in progress look old."""
    stamp = temp.removeprefix("tmp/").split("-", 1)[0]
    return max(reported, int(stamp) / 1000) if stamp.isdigit() else reported
