"""python -m analyzer: Gemini vision analysis of media, with a CLIP zero-shot fallback."""

from __future__ import annotations

import asyncio

import uvloop

from analyzer.app import serve
from analyzer.settings import AnalyzerSettings
from common.log import configure_logging
from common.settings import load_settings
from common.telemetry import configure_telemetry


def main() -> None:
    settings = load_settings(AnalyzerSettings, listen="worker_http_host")
    configure_logging(settings, "analyzer")
    configure_telemetry("analyzer")
    uvloop.install()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
