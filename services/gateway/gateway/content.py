"""Stored bytes over HTTP, from any storage backend: ranges, validators, or a presigned URL.

Content is immutable and named by its sha256, so the key's hash is a strong ETag: a client
that has it gets 304. One range per request (`Range: bytes=a-b`, `a-`, `-n`) is answered
with 206; anything else this server does not serve as a range gets the whole body (as RFC
9110 allows), an unsatisfiable one 416. With S3 and S3_PRESIGNED_READS, the answer is a
redirect to a short-lived presigned URL instead, so the bytes do not pass through the
gateway (the client must be able to reach the S3 endpoint).
"""

from __future__ import annotations

import structlog
from aiohttp import hdrs, web

from common.storage import Storage, StorageUnavailable
from gateway.errors import ApiError

log = structlog.get_logger(__name__)


def _range(request: web.Request, size: int) -> tuple[int, int] | None:
    """The (start, stop) asked for, None for the whole body; 416 when it cannot be met."""
    if hdrs.RANGE not in request.headers:
        return None
    try:
        wanted = request.http_range
    except ValueError:
        return None  # malformed or several ranges: the whole body, as RFC 9110 allows
    start, stop = wanted.start, wanted.stop
    if start is None and stop is None:
        return None
    if start is None:
        start = 0
    if start < 0:  # a suffix: the last -start bytes
        start = max(0, size + start)
        stop = size
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        raise ApiError(
            416,
            "the range asked for is not in the object",
            {"size": size},
            headers={hdrs.CONTENT_RANGE: f"bytes */{size}"},
        )
    return start, stop


async def serve_object(
    request: web.Request,
    storage: Storage,
    key: str,
    *,
    content_type: str,
    headers: dict[str, str],
    missing: str,
    presigned_seconds: int = 0,
) -> web.StreamResponse:
    """Stream one stored object (or redirect to it); 410 `missing` when it is gone."""
    try:
        found = await storage.stat(key)
    except StorageUnavailable as error:
        log.warning("storage unreachable for a read", key=key, error=str(error))
        raise ApiError(503, "storage unavailable", headers={"Retry-After": "5"}) from None
    if found is None:
        raise ApiError(410, missing)
    if presigned_seconds:
        url = await storage.read_url(
            key,
            expires=presigned_seconds,
            content_type=content_type,
            disposition=headers.get(hdrs.CONTENT_DISPOSITION),
        )
        if url is not None:
            raise web.HTTPTemporaryRedirect(url, headers=headers)
    etag = f'"{key.rsplit("/", 1)[-1]}"'
    common = {
        **headers,
        hdrs.CONTENT_TYPE: content_type,
        hdrs.ETAG: etag,
        hdrs.ACCEPT_RANGES: "bytes",
    }
    if request.headers.get(hdrs.IF_NONE_MATCH) in (etag, "*"):
        return web.Response(status=304, headers=common)
    span = _range(request, found.size)
    start, stop = span if span is not None else (0, found.size)
    response = web.StreamResponse(status=200 if span is None else 206, headers=common)
    if span is not None:
        response.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{stop - 1}/{found.size}"
    response.content_length = stop - start
    if request.method == hdrs.METH_HEAD or stop == start:
        await response.prepare(request)
        await response.write_eof()
        return response
    chunks = storage.open(key, start=start, length=stop - start)
    try:
        first = await anext(chunks)
    except StorageUnavailable as error:
        log.warning("storage unreachable for a read", key=key, error=str(error))
        raise ApiError(503, "storage unavailable", headers={"Retry-After": "5"}) from None
    except (FileNotFoundError, StopAsyncIteration):
        raise ApiError(410, missing) from None
    await response.prepare(request)
    await response.write(first)
    # Past this point the status is sent: a store failing mid-body cuts the connection (the
    # client sees a short body against Content-Length), which is all HTTP allows.
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response
