"""Browser tests: a real headless Chromium (Debian's, driven by Playwright) against the real
gateway, with the colour model's embedder and the clusterer running (tests/clusterer)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.clusterer.conftest import (  # noqa: F401 (fixtures)
    clusterer,
    clusterer_settings,
    colour_embedder,
    colour_models,
    start_embedder,
)
from tests.clusterer.test_recluster import start_clusterer  # noqa: F401
from tests.integration.conftest import gateway, start_gateway  # noqa: F401
from tests.schemer.conftest import schemer, schemer_settings, start_schemer  # noqa: F401

# Screenshots of each page, kept as the run's artefacts (README's pictures come from here).
ARTEFACTS = Path(
    os.environ.get("UI_ARTEFACTS", Path(__file__).parents[2] / "test-artifacts" / "ui")
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: scripts/ensure_test_tools.sh installs it")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        found = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield found
        await found.close()
