"""A fake Gemini API on 127.0.0.1, spoken to by the real google-genai client.

It answers `POST /{version}/models/{model}:generateContent` the way the Gemini API does: a
candidate whose text is the JSON answer, or an error body with google.rpc details. Tests
script what each call gets and read back what arrived, and when.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

GOOD_ANSWER: dict[str, Any] = {
    "tags": ["red", "Abstract", "colour field", "red"],
    "primary_category": "abstract art",
    "description": "A field of red with fine noise.",
    "objects": [],
    "scene_type": "studio",
    "colour_palette": ["red"],
    "visible_text": "",
    "suggested_cluster_name": "Red studies",
}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    text: str | None = None  # the model's answer text (status 200)
    body: dict[str, Any] | None = None  # an error body (status >= 400)
    delay: float = 0.0


def answer(content: dict[str, Any] | None = None) -> Reply:
    return Reply(text=orjson.dumps(content or GOOD_ANSWER).decode())


def error(status: int, retry_delay: str | None = None) -> Reply:
    names = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED",
             500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip
    details = (
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
        if retry_delay
        else []
    )
    return Reply(
        status=status,
        body={"error": {"code": status, "message": "fake", "status": names.get(status, "ERROR"),
                        "details": details}},
    )  # fmt: skip


@dataclass
class Call:
    at: float
    path: str
    api_key: str | None
    body: dict[str, Any]


@dataclass
class FakeGemini:
    url: str = ""
    script: list[Reply] = field(default_factory=list)
    default: Reply = field(default_factory=answer)
    calls: list[Call] = field(default_factory=list)
    stall: asyncio.Event | None = None  # when set up, every answer waits for it

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(
            Call(time.time(), request.path, request.headers.get("x-goog-api-key"), body)
        )
        reply = self.script.pop(0) if self.script else self.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if self.stall is not None:
            await self.stall.wait()
        if reply.status >= 400:
            return web.json_response(reply.body, status=reply.status)
        model = request.match_info["model"].split(":")[0]
        return web.json_response(
            {
                "candidates": [
                    {
                        "content": {"parts": [{"text": reply.text}], "role": "model"},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "modelVersion": model,
                "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 80,
                                  "totalTokenCount": 380},
            }
        )  # fmt: skip

    def images_sent(self) -> list[tuple[str, bytes]]:
        """(mime type, bytes) of every inline image received."""
        import base64

        found = []
        for call in self.calls:
            for content in call.body.get("contents", []):
                for part in content.get("parts", []):
                    data = part.get("inlineData") or part.get("inline_data")
                    if data:
                        mime = data.get("mimeType") or data.get("mime_type")
                        # The client sends URL-safe base64 without padding.
                        raw = data["data"] + "=" * (-len(data["data"]) % 4)
                        found.append((mime, base64.urlsafe_b64decode(raw)))
        return found


@asynccontextmanager
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    fake = FakeGemini()
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/{version}/models/{model}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        if fake.stall is not None:
            fake.stall.set()
        await runner.cleanup()
