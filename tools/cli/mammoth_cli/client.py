"""The HTTP API as the command line speaks to it: MAMMOTH_URL and MAMMOTH_API_KEY, errors as
exceptions that carry the exit code, and waiting out what the gateway asks to be retried."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

# Exit codes (README "Command line"): 0 done, 1 something failed, 2 a usage error (click's),
# 3 the gateway unreachable or unavailable, 4 the key refused.
FAILED, UNAVAILABLE, REFUSED = 1, 3, 4
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
MAX_RETRY_AFTER = 60.0


class ApiFailure(Exception):
    """An answer that is not a success, or no answer; `code` is the exit code it means."""

    def __init__(self, message: str, code: int = FAILED, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _message(status: int, body: Any) -> str:
    if isinstance(body, dict) and "error" in body:
        details = body.get("details")
        return f"{status}: {body['error']}" + (f" ({details})" if details else "")
    return f"{status}: {str(body)[:300]}"


def _code(status: int) -> int:
    if status in (401, 403):
        return REFUSED
    if status in RETRY_STATUSES:
        return UNAVAILABLE
    return FAILED


def retry_after(headers: Any, attempt: int) -> float:
    """The server's Retry-After (seconds, capped) or an exponential backoff with jitter."""
    try:
        asked = float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        asked = min(2.0**attempt * 0.5, 30.0)
    return min(max(asked, 0.1), MAX_RETRY_AFTER) * random.uniform(1.0, 1.2)


async def answer_of(
    response: aiohttp.ClientResponse, *, text: bool = False
) -> tuple[int, Any, Any]:
    """(status, body, headers): the body as JSON, or as text when it is not JSON (or when a
    success is asked for as `text`)."""
    raw = await response.read()
    if not (text and response.status < 400):
        try:
            return response.status, orjson.loads(raw), response.headers
        except orjson.JSONDecodeError:
            pass
    return response.status, raw.decode(errors="replace"), response.headers


class Client:
    """One session against one gateway; `retry_for` is how long to keep retrying a request
    the gateway refused for now (503 and Retry-After) or that the network dropped."""

    def __init__(self, url: str, key: str | None, *, retry_for: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retry_for = retry_for
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            headers=self.headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the client in `async with`"
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        *,
        retry: bool = True,
        text: bool = False,
        **kwargs: Any,
    ) -> Any:
        """The JSON (or text) of a successful answer; ApiFailure otherwise. `data` may be a
        callable that makes the body anew for each attempt (a form of open files)."""
        make = kwargs.pop("data", None)

        async def once() -> tuple[int, Any, Any]:
            body = make() if callable(make) else make
            async with self.session.request(
                method, self.url + path, data=body, **kwargs
            ) as response:
                return await answer_of(response, text=text)

        _, answer, _ = await self.with_retries(once, retry)
        return answer

    async def with_retries(
        self, once: Callable[[], Awaitable[tuple[int, Any, Any]]], retry: bool = True
    ) -> tuple[int, Any, Any]:
        """Run `once` until it answers below 400 (returned), answers an error that retrying
        cannot help (ApiFailure), or `retry_for` seconds have gone."""
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            attempt += 1
            try:
                status, body, headers = await once()
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
                status, body, headers = 0, f"no answer from {self.url}: {e or type(e).__name__}", {}
            if 0 < status < 400:
                return status, body, headers
            retryable = status == 0 or status in RETRY_STATUSES
            pause = retry_after(headers, attempt)
            if not (retry and retryable) or time.monotonic() + pause > deadline:
                if status == 0:
                    raise ApiFailure(str(body), UNAVAILABLE)
                raise ApiFailure(_message(status, body), _code(status), status)
            await asyncio.sleep(pause)
