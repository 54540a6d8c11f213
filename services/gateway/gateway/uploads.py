"""Slow and vanishing clients: a body must keep arriving and finish in time, uploads at once
are capped, and a client that goes away mid-upload is its own doing, not a storage error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import StreamReader, web
from prometheus_client import Counter, Gauge

from gateway.errors import ApiError
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

UPLOADS_IN_PROGRESS = Gauge("ingest_uploads_in_progress", "Ingest requests being handled.")
UPLOADS_CUT = Counter(
    "ingest_uploads_cut_total",
    "Ingest requests refused or cut before their body was read, by reason.",
    ["reason"],  # busy, idle_timeout, timeout, client_abort
)
CLIENT_CLOSED = 499  # nginx's "client closed request": for the access log; nobody reads it


class UploadSlots:
    """At most `limit` ingest requests at once in this process; beyond it, 503 at once.

    Refused rather than queued: a queued request still holds its connection and its unread
    body, which is what a flood of slow clients exhausts; a 503 with Retry-After frees them
    and tells a well-behaved client when to come back.
    """

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.active = 0

    def acquire(self) -> None:
        """Take a slot, or raise the 503; every acquire is paired with a `release`."""
        if self.active >= self.limit:
            UPLOADS_CUT.labels("busy").inc()
            raise ApiError(
                503,
                "too many uploads in progress",
                {"limit": self.limit},
                headers={"Retry-After": str(self.retry_after)},
            )
        self.active += 1
        UPLOADS_IN_PROGRESS.inc()

    def release(self) -> None:
        self.active -= 1
        UPLOADS_IN_PROGRESS.dec()


UPLOAD_SLOTS: web.AppKey[UploadSlots] = web.AppKey("upload_slots", UploadSlots)


class _IdleWatch:
    """Expires `deadline` once no byte of the body arrived for `idle` seconds.

    Progress is read from the stream's byte count (bytes received, not consumed), a few
    times per `idle`: one timer per request instead of a timeout around every read.
    """

    def __init__(self, stream: StreamReader, idle: float, deadline: asyncio.Timeout) -> None:
        self.loop = asyncio.get_running_loop()
        self.stream = stream
        self.idle = idle
        self.deadline = deadline
        self.seen = stream.total_bytes
        self.since = self.loop.time()
        self.stalled = False
        self.handle = self.loop.call_later(idle / 4, self.check)

    def check(self) -> None:
        now = self.loop.time()
        if self.stream.total_bytes != self.seen:
            self.seen, self.since = self.stream.total_bytes, now
        elif now - self.since >= self.idle:
            self.stalled = True
            self.deadline.reschedule(now)
            return
        self.handle = self.loop.call_later(self.idle / 4, self.check)


@contextlib.asynccontextmanager
async def read_deadline(request: web.Request, settings: GatewaySettings) -> AsyncIterator[None]:
    """408 when the body stalls for UPLOAD_IDLE_TIMEOUT_SECONDS or takes longer than
    UPLOAD_TIMEOUT_SECONDS in all (the caller's `finally` removes its temp files)."""
    idle, total = settings.upload_idle_timeout_seconds, settings.upload_timeout_seconds
    try:
        async with asyncio.timeout(total) as deadline:
            watch = _IdleWatch(request.content, idle, deadline)
            try:
                yield
            except asyncio.CancelledError:
                # A server with handler_cancellation (aiohttp's test server) cancels the
                # handler of a connection that closed, instead of failing its reads.
                if not deadline.expired() and request.transport is None:
                    _note_client_abort(request, "connection lost")
                raise
            finally:
                watch.handle.cancel()
    except TimeoutError:
        if not deadline.expired():
            raise
        reason = "idle_timeout" if watch.stalled else "timeout"
        UPLOADS_CUT.labels(reason).inc()
        log.info("upload cut", reason=reason, received_bytes=request.content.total_bytes)
        if watch.stalled:
            error, limit = f"no part of the upload arrived for {idle:g} s", idle
        else:
            error, limit = f"the upload took longer than {total:g} s", total
        raise ApiError(408, error, {"timeout_seconds": limit}, {"Connection": "close"}) from None


def client_aborted(request: web.Request, error: BaseException) -> ApiError:
    """The client closed the connection mid-upload: logged as such, answered to nobody."""
    _note_client_abort(request, str(error))
    return ApiError(CLIENT_CLOSED, "the client closed the connection")


def _note_client_abort(request: web.Request, reason: str) -> None:
    UPLOADS_CUT.labels("client_abort").inc()
    log.info(
        "upload aborted by the client", received_bytes=request.content.total_bytes, reason=reason
    )
