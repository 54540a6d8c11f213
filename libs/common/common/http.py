"""What every MammothBox HTTP server (the gateway, the workers' probes) answers alike.

- No versions in `Server` (aiohttp's default names Python's and its own), and
  `X-Content-Type-Options: nosniff` on every answer.
- A request aiohttp's protocol layer refuses before any handler runs (a malformed request
  line or header, a header over the limit, broken chunked framing) is answered with the JSON
  error shape `{error, request_id}` and logged as one warning line: it is the client's
  mistake, not a traceback to page anyone about. aiohttp offers no setting for this
  (aio-libs/aiohttp#3287), so `AppRunner` makes connections with a `RequestHandler` whose
  `handle_error` says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from common.telemetry import PROBE_PATHS, untraced

log = structlog.get_logger("http")

SERVER = "mammothbox"
REQUEST_ID_HEADER = "X-Request-ID"


def plain_headers(response: web.StreamResponse) -> None:
    """Name no versions and forbid content sniffing."""
    response.headers[hdrs.SERVER] = SERVER
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


async def _on_prepare(_: web.Request, response: web.StreamResponse) -> None:
    plain_headers(response)


def harden(app: web.Application) -> web.Application:
    """Every answer of `app` gets the plain headers (errors included), and probes leave no
    trace (their database checks included)."""
    app.on_response_prepare.append(_on_prepare)
    app.middlewares.insert(0, _untraced_probes)
    return app


@web.middleware
async def _untraced_probes(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in PROBE_PATHS:
        with untraced():
            return await handler(request)
    return await handler(request)


def _reason(error: BaseException | None) -> str:
    """What was wrong with the request, in words (never the bytes it sent)."""
    if isinstance(error, LineTooLong):
        return "a request line or header is too long"
    if isinstance(error, BadStatusLine):
        return "malformed request line"
    if isinstance(error, InvalidHeader):
        return "malformed header"
    if isinstance(error, PayloadEncodingError):
        return "malformed body framing"
    return "malformed request"


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection protocol, answering its own errors as JSON."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        rid = uuid.uuid4().hex
        if status >= 500:
            # Not the client's fault: an error escaped every handler (or it timed out).
            log.error("request failed", status=status, request_id=rid, exc_info=exc)
            error = "the request took too long" if status == 504 else "internal error"
        else:
            error = f"malformed HTTP request: {_reason(exc)}"
            log.warning(
                "malformed http request",
                status=status,
                reason=_reason(exc),
                error_type=type(exc).__name__ if exc is not None else None,
                remote=request.remote,
                request_id=rid,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the response was under way; it cannot become an error")
        response = web.json_response(
            {"error": error, "request_id": rid}, status=status, headers={REQUEST_ID_HEADER: rid}
        )
        plain_headers(response)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # A body that breaks its framing after the answer (read while the connection lingers)
        # is the client's mistake too.
        error = kw.get("exc_info")
        if isinstance(error, RequestPayloadError | HttpProcessingError):
            log.warning("malformed http request body", error_type=type(error).__name__)
            return
        super().log_exception(*args, **kw)


class _Server(web.Server):
    """aiohttp's low-level server, making `_JsonErrorHandler` connections."""

    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer malformed requests with JSON errors."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server; only the protocol it makes differs
        return server
