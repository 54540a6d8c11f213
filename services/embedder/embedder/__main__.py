"""python -m embedder: CLIP (or any manifest-described ONNX encoder) embeddings for media."""

from __future__ import annotations

import asyncio

import uvloop

from common.log import configure_logging
from common.settings import load_settings
from common.telemetry import configure_telemetry
from embedder.app import serve
from embedder.settings import EmbedderSettings


def main() -> None:
    settings = load_settings(EmbedderSettings, listen="worker_http_host")
    configure_logging(settings, "embedder")
    configure_telemetry("embedder")
    uvloop.install()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
