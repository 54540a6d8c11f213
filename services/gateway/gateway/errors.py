"""JSON errors with request ids, and the middlewares that make every answer carry them."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from pydantic import ValidationError

log = structlog.get_logger("gateway")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


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


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body: 413 over `max_bytes`, 400 when it is not JSON."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "the request body is too large")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ApiError(413, "the request body is too large")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body must be JSON") from None


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
    with structlog.contextvars.bound_contextvars(request_id=rid):
        try:
            response = await handler(request)
        except ApiError as e:
            response = error_response(request, e.status, e.error, e.details, e.headers, **e.extra)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            response = error_response(request, e.status, e.reason, headers=_allow(e))
        except Exception:
            log.exception("unhandled error", path=request.path)
            response = error_response(request, 500, "internal error")
    response.headers[REQUEST_ID_HEADER] = rid
    return response


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
            remote=request.remote,
        )

    @property
    def enabled(self) -> bool:
        return True
