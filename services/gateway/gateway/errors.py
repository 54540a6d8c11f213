"""JSON errors with request ids, and the middlewares that make every answer carry them."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes

import aio_pika
import asyncpg
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from common.bus import BusUnavailable
from common.rpc import RpcTimeout
from common.storage import StorageUnavailable
from common.telemetry import current_trace_id

log = structlog.get_logger("gateway")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
TRACE_ID: web.RequestKey[str | None] = web.RequestKey("trace_id")
# The Retry-After of a 503 while a dependency is down (RETRY_AFTER_SECONDS).
RETRY_AFTER: web.AppKey[int] = web.AppKey("retry_after", int)

# What a database that is down, starting, stopping or out of connections raises, by class:
# connecting (refused, unreachable, timed out: OSError, TimeoutError among them; 57P03),
# losing the connection (class 08, 57P01, 57P02) and running out of resources (class 53).
# A plain InterfaceError (connection or pool closed) counts too; its subclasses are misuse.
_DATABASE_DOWN = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InsufficientResourcesError,
)
_BUS_DOWN = (
    BusUnavailable,
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,
)


class ApiError(Exception):
    """An error answered as JSON `{error, details?, request_id}`."""

    def __init__(
        self,
        status: int,
        error: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details
        self.headers = headers or {}
        self.extra = extra


def invalid(what: str, error: ValidationError) -> ApiError:
    """A 400 naming each field at fault (pydantic's messages, without the input echoed)."""
    details = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "error": e["msg"]}
        for e in error.errors(include_url=False, include_input=False)
    ]
    return ApiError(400, f"invalid {what}", details)


def no_nul(value: str, what: str) -> str:
    """The value, or a 400 naming it when it holds a NUL character (PostgreSQL text cannot)."""
    if "\x00" in value:
        raise ApiError(400, f"{what} contains a NUL character, which cannot be stored")
    return value


def unavailable(error: BaseException) -> str | None:
    """The error to answer (with 503) when `error` means a dependency is down, else None."""
    if isinstance(error, _BUS_DOWN):  # first: AMQP connection errors are OSErrors too
        return "the message bus is unavailable"
    if isinstance(error, RpcTimeout):  # a TimeoutError, but no answer is not an outage
        return None
    if isinstance(error, StorageUnavailable):
        return "storage unavailable"
    if isinstance(error, _DATABASE_DOWN) or type(error) is asyncpg.InterfaceError:
        return "database unavailable"
    return None


def request_id(request: web.Request) -> str:
    return str(request.get(REQUEST_ID, ""))


def error_response(
    request: web.Request,
    status: int,
    error: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if details is not None:
        body["details"] = details
    body.update(extra)
    body["request_id"] = request_id(request)
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (taken from X-Request-ID when sane) and JSON errors."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    # The access line is written after the request's span ended: it takes the trace id here.
    request[TRACE_ID] = current_trace_id()
    with structlog.contextvars.bound_contextvars(request_id=rid):
        try:
            _refuse_nul_in_query(request)
            response = await handler(request)
        except ApiError as e:
            response = error_response(request, e.status, e.error, e.details, e.headers, **e.extra)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            response = error_response(request, e.status, e.reason, headers=_allow(e))
        except Exception as e:
            down = unavailable(e)
            if down is None:
                log.exception("unhandled error", path=request.path)
                response = error_response(request, 500, "internal error")
            else:
                # The driver's words stay in the log: they may name hosts, users or files.
                log.warning(down, path=request.path, error=f"{type(e).__name__}: {e}")
                retry = {"Retry-After": str(request.app[RETRY_AFTER])}
                response = error_response(request, 503, down, headers=retry)
    response.headers[REQUEST_ID_HEADER] = rid
    return response


def _refuse_nul_in_query(request: web.Request) -> None:
    """NUL characters, and percent-escapes that are not UTF-8 (decoded, they would become
    U+FFFD and be searched for or stored as such): a 400 before any handler runs."""
    raw = request.rel_url.raw_query_string
    if "%" in raw:
        try:
            unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the query string is not valid UTF-8") from None
    for name, value in request.query.items():
        no_nul(name, "a query parameter name")
        no_nul(value, f"query parameter {name!r}")


def _allow(error: web.HTTPException) -> dict[str, str]:
    allow = error.headers.get("Allow")
    return {"Allow": allow} if allow else {}


class AccessLogger(AbstractAccessLogger):
    """Access logs through structlog, one JSON line per request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        log.info(
            "http request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time_ * 1000, 2),
            request_id=response.headers.get(REQUEST_ID_HEADER),
            trace_id=request.get(TRACE_ID) if isinstance(request, web.Request) else None,
            remote=request.remote,
        )

    @property
    def enabled(self) -> bool:
        return True
