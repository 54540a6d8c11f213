"""An HTTP proxy in front of the S3 server that fails chosen requests as S3 would.

Faults at the S3 API's level, not the TCP level: a 500 InternalError or 503 SlowDown for the
Nth part of multipart uploads, or every request refused while the store is "down". The rest
is passed through unchanged (moto does not check signatures, so the Host may change).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.ports import free_port

_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}
_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>injected by the test</Message></Error>"
)


@dataclass
class S3Faults:
    """What to fail: parts numbered `parts_from` and later (each attempt, or only the first
    `part_attempts` attempts of each), or everything while `down`."""

    target: str
    parts_from: int | None = None
    part_attempts: int | None = None
    status: int = 500
    down: bool = False
    failed: int = 0
    seen: list[str] = field(default_factory=list)
    _attempts: dict[str, int] = field(default_factory=dict)
    port: int = 0

    def _fault(self, request: web.Request) -> int | None:
        if self.down:
            return 503
        number = request.query.get("partNumber")
        if request.method != "PUT" or number is None or self.parts_from is None:
            return None
        if int(number) < self.parts_from:
            return None
        key = f"{request.query.get('uploadId')}:{number}"
        self._attempts[key] = self._attempts.get(key, 0) + 1
        if self.part_attempts is not None and self._attempts[key] > self.part_attempts:
            return None
        return self.status

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(f"{request.method} {request.path_qs}")
        body = await request.read()
        status = self._fault(request)
        if status is not None:
            self.failed += 1
            code = "SlowDown" if status == 503 else "InternalError"
            return web.Response(
                status=status, text=_ERROR.format(code=code), content_type="application/xml"
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=io.BytesIO(body),
            allow_redirects=False,
        ) as answer:
            data = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD" and "Content-Length" in answer.headers:
                out["Content-Length"] = answer.headers["Content-Length"]  # the object's size
            return web.Response(status=answer.status, body=data, headers=out)

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    def parts_sent(self) -> list[int]:
        return [int(m.group(1)) for s in self.seen if (m := re.search(r"partNumber=(\d+)", s))]
