"""Placeholder names: CLIP zero-shot labels through the embedder's text RPC, cached per model."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import structlog
from numpy.typing import NDArray

from clusterer.logic import best_label
from common.bus import BusUnavailable
from common.embed_client import EmbedError, TextEmbedClient

log = structlog.get_logger(__name__)

RETRY_AFTER_S = 60.0


class Labeler:
    """Embeds the label set once per model; says None when the model has no text side."""

    def __init__(self, client: TextEmbedClient, labels: tuple[str, ...], template: str) -> None:
        self.client = client
        self.labels = labels
        self.template = template
        self._vectors: dict[str, NDArray[np.float32]] = {}
        self._unavailable_until: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def label(self, model_id: str, embedding: NDArray[np.float32]) -> str | None:
        vectors = await self._label_vectors(model_id)
        if vectors is None:
            return None
        return best_label(self.labels, vectors, embedding)

    async def _label_vectors(self, model_id: str) -> NDArray[np.float32] | None:
        if model_id in self._vectors:
            return self._vectors[model_id]
        if time.monotonic() < self._unavailable_until.get(model_id, 0.0):
            return None
        async with self._lock:
            if model_id in self._vectors:
                return self._vectors[model_id]
            try:
                served_by, vectors = await self.client.embed(
                    [self.template.format(label) for label in self.labels]
                )
            except (EmbedError, BusUnavailable) as error:
                self._unavailable(model_id, str(error))
                return None
            if served_by != model_id:
                # Text vectors of another model live in another space: useless here.
                self._unavailable(model_id, f"the embedder serves {served_by}")
                return None
            self._vectors[model_id] = vectors
            return vectors

    def _unavailable(self, model_id: str, reason: str) -> None:
        log.warning(
            "no zero-shot labels; clusters get untitled names", model=model_id, reason=reason
        )
        self._unavailable_until[model_id] = time.monotonic() + RETRY_AFTER_S
