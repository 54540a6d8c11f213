"""An analyzer per test, pointed at a fake Gemini server; the colour embedder for fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from analyzer.app import running
from analyzer.handlers import AnalyzerDeps
from analyzer.settings import AnalyzerSettings
from tests.analyzer.fake_gemini import FakeGemini, fake_gemini


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with fake_gemini() as fake:
        yield fake


@pytest.fixture
def analyzer_settings(
    common_settings: dict[str, Any], gemini: FakeGemini
) -> Callable[..., AnalyzerSettings]:
    def make(**overrides: Any) -> AnalyzerSettings:
        values: dict[str, Any] = {
            **common_settings,
            "gemini_api_key": "test-key",
            "vlm_model": "gemini-test",
            "vlm_base_url": gemini.url,
            "vlm_timeout": 1.0,
            "vlm_max_retries": 3,
            "vlm_backoff_base_s": 0.05,
            "vlm_backoff_max_s": 0.2,
            "vlm_rate_limit_per_minute": 0,
            "vlm_breaker_failures": 3,
            "vlm_breaker_reset_s": 0.5,
            "analysis_labels": ("red", "green", "blue", "yellow"),
            "label_timeout_s": 2.0,
            "worker_http_port": 0,
        }
        values.update(overrides)
        return AnalyzerSettings(**values)

    return make


@pytest.fixture
def start_analyzer(
    analyzer_settings: Callable[..., AnalyzerSettings],
) -> Callable[..., AbstractAsyncContextManager[AnalyzerDeps]]:
    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[AnalyzerDeps]:
        async with running(analyzer_settings(**overrides)) as deps:
            await deps.bus.wait_connected(10)
            yield deps

    return start


from tests.clusterer.conftest import (  # noqa: E402, F401
    clusterer,
    clusterer_settings,
    colour_embedder,
    colour_models,
    start_embedder,
)
from tests.integration.conftest import gateway, start_gateway  # noqa: E402, F401
