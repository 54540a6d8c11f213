"""A tiny CLIP exported by the project's own exporter, and an embedder running on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from embedder.app import running
from embedder.handlers import EmbedderDeps
from embedder.settings import EmbedderSettings


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Export once per run: a randomly initialised tiny CLIP with vision and text graphs."""
    from mammoth_export.export import export_tiny_clip

    models = tmp_path_factory.mktemp("models")
    export_tiny_clip(models / "clip-tiny", seed=0)
    return models


@pytest.fixture
def embedder_settings(
    common_settings: dict[str, Any], tiny_clip_dir: Path
) -> Callable[..., EmbedderSettings]:
    def make(**overrides: Any) -> EmbedderSettings:
        values: dict[str, Any] = {
            **common_settings,
            "model_dir": tiny_clip_dir,
            "embedding_model": "clip-tiny",
            "onnx_providers": ("cpu",),
            "intra_op_threads": 1,
            "max_batch_size": 16,
            "max_batch_wait_ms": 100,
            "decode_workers": 2,
            "decode_timeout_s": 20,
            "worker_http_port": 0,
        }
        values.update(overrides)
        return EmbedderSettings(**values)

    return make


@pytest.fixture
async def embedder(
    embedder_settings: Callable[..., EmbedderSettings],
) -> AsyncIterator[EmbedderDeps]:
    async with running(embedder_settings()) as deps:
        await deps.bus.wait_connected(10)
        yield deps


# The gateway fixtures, so a test can upload through HTTP and let the real pipeline run.
from tests.integration.conftest import gateway, start_gateway  # noqa: E402, F401
