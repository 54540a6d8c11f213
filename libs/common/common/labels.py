"""CLIP zero-shot labels: a label set embedded once per model through the embedder's text RPC.

The clusterer names new clusters with the best label; the analyzer tags with the best few when
it cannot (or may not) ask the VLM.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import numpy as np
import structlog
from numpy.typing import NDArray
from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode

from common.bus import BusUnavailable
from common.embed_client import EmbedError, NoTextEncoder, TextEmbedClient
from common.settings import comma_separated

log = structlog.get_logger(__name__)

RETRY_AFTER_S = 60.0
# CLIP's logit scale: softmax(100 * cosine) turns label similarities into probabilities.
LOGIT_SCALE = 100.0

# Broad everyday categories; a deployment can set its own.
DEFAULT_LABELS = (
    "people", "portrait", "group photo", "selfie", "child", "cat", "dog", "bird", "horse",
    "wildlife", "insect", "fish", "flowers", "trees", "plants", "food", "drink", "coffee",
    "fruit", "landscape", "mountains", "beach", "sea", "sky", "sunset", "night", "snow",
    "city", "street", "building", "architecture", "interior", "room", "car", "bicycle",
    "train", "aircraft", "boat", "rocket", "space", "astronomy", "microscopy", "medical scan",
    "document", "receipt", "invoice", "screenshot", "chart", "diagram", "map", "text",
    "drawing", "painting", "cartoon", "logo", "pattern", "texture", "sport", "music",
    "concert", "party", "wedding", "clothing", "shoes", "furniture", "tools", "electronics",
    "computer", "phone", "toy", "book", "art", "sculpture", "vehicle", "machine",
)  # fmt: skip


MAX_LABELS = 256  # one text-embedding request


def _label_set(value: object) -> object:
    value = comma_separated(value)
    if not value:
        raise ValueError("needs at least one label")
    if isinstance(value, tuple | list) and len(value) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    return value


def _template(value: str) -> str:
    if value.count("{}") != 1:
        raise ValueError("must contain {} once, where the label goes")
    return value


# Settings types for a label set (comma-separated in the environment) and its prompt template.
LabelSet = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_label_set)]
LabelTemplate = Annotated[str, AfterValidator(_template)]


class LabelsUnavailable(RuntimeError):
    """No label vectors for this model right now (the embedder did not answer in time)."""


class Labeler:
    """Embeds the label set once per model and ranks labels for an image embedding."""

    def __init__(self, client: TextEmbedClient, labels: tuple[str, ...], template: str) -> None:
        self.client = client
        self.labels = labels
        self.template = template
        self._vectors: dict[str, NDArray[np.float32] | None] = {}
        self._unavailable_until: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def ranked(
        self, model_id: str, embedding: NDArray[np.float32]
    ) -> list[tuple[str, float]] | None:
        """(label, probability) best first; None when the model has no text encoder.

        Raises LabelsUnavailable when the embedder could not be asked (retry later).
        """
        vectors = await self._label_vectors(model_id)
        if vectors is None:
            return None
        logits = LOGIT_SCALE * (vectors @ embedding)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")
        return [(self.labels[i], float(probabilities[i])) for i in order]

    async def label(self, model_id: str, embedding: NDArray[np.float32]) -> str | None:
        """The best label, or None when none can be had now (for a placeholder name)."""
        try:
            ranked = await self.ranked(model_id, embedding)
        except LabelsUnavailable:
            return None
        return ranked[0][0] if ranked else None

    async def _label_vectors(self, model_id: str) -> NDArray[np.float32] | None:
        if model_id in self._vectors:
            return self._vectors[model_id]
        if time.monotonic() < self._unavailable_until.get(model_id, 0.0):
            raise LabelsUnavailable(f"no label vectors for {model_id} yet")
        async with self._lock:
            if model_id in self._vectors:
                return self._vectors[model_id]
            try:
                vectors = await self.client.embed(
                    [self.template.format(label) for label in self.labels], model_id
                )
            except NoTextEncoder:
                log.warning("the model has no text encoder: no zero-shot labels", model=model_id)
                self._vectors[model_id] = None
                return None
            except (EmbedError, BusUnavailable) as error:
                self._unavailable(model_id, str(error))
                raise LabelsUnavailable(str(error)) from None
            self._vectors[model_id] = vectors
            return vectors

    def _unavailable(self, model_id: str, reason: str) -> None:
        log.warning("no zero-shot labels for now", model=model_id, reason=reason)
        self._unavailable_until[model_id] = time.monotonic() + RETRY_AFTER_S
