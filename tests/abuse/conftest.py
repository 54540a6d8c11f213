"""One running system (all five services, API keys on, small upload limits) for the
hostile-input corpus and the stateful fuzzing, and the ids of one owner's real data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.abuse.corpus import ADMIN, API_KEYS
from tests.clusterer.conftest import colour_models  # noqa: F401
from tests.observability.conftest import own_system
from tests.observability.harness import System

LIMITS = {
    "MAX_IMAGE_BYTES": str(2 * 1024 * 1024),
    "MAX_JSON_BYTES": str(1024 * 1024),
    "MAX_JSON_ITEMS": "1000",
}


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def abuse_system(
    tmp_path_factory: pytest.TempPathFactory,
    colour_models: Path,  # noqa: F811
) -> AsyncIterator[System]:
    async with own_system(
        tmp_path_factory.mktemp("abuse"),
        colour_models,
        extra_env={
            "API_KEYS": API_KEYS,
            "ADMIN_API_KEY": ADMIN,
            "OTEL_SDK_DISABLED": "true",
            "VLM_RATE_LIMIT_PER_MINUTE": "0",
            **LIMITS,
        },
    ) as system:
        yield system
