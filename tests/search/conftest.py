"""Search runs over the whole pipeline: gateway, colour embedder, clusterer, analyzer."""

from __future__ import annotations

from tests.analyzer.conftest import analyzer_settings, gemini, start_analyzer  # noqa: F401
from tests.clusterer.conftest import (  # noqa: F401
    clusterer,
    clusterer_settings,
    colour_embedder,
    colour_models,
    start_embedder,
)
from tests.integration.conftest import gateway, start_gateway  # noqa: F401
from tests.schemer.conftest import schemer_settings, start_schemer  # noqa: F401
