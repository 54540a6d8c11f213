"""The CLIP fallback: zero-shot tags from the content's own image embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from common.labels import Labeler
from common.messages import CLIP_FALLBACK_MODEL

FALLBACK_MODEL = CLIP_FALLBACK_MODEL


async def clip_analysis(
    labeler: Labeler,
    model_id: str,
    embedding: NDArray[np.float32],
    *,
    max_tags: int,
    min_probability: float,
) -> dict[str, Any]:
    """An analysis from the label set: the best labels as tags, the best as category and name.

    Raises LabelsUnavailable when the embedder cannot be asked right now. A model without a
    text encoder gives an analysis without tags (there is nothing to compare with).
    """
    ranked = await labeler.ranked(model_id, embedding)
    base: dict[str, Any] = {
        "source": FALLBACK_MODEL,
        "model": FALLBACK_MODEL,
        "description": "",
        "objects": [],
        "scene_type": "",
        "colour_palette": [],
        "visible_text": "",
    }
    if ranked is None:
        return {
            **base,
            "tags": [],
            "primary_category": None,
            "suggested_cluster_name": None,
            "note": f"{model_id} has no text encoder, so no zero-shot labels",
        }
    best = ranked[0][0]
    tags = [label for label, p in ranked[:max_tags] if p >= min_probability] or [best]
    return {
        **base,
        "tags": tags,
        "primary_category": best,
        "suggested_cluster_name": best,
        "label_scores": {label: round(p, 4) for label, p in ranked[:max_tags]},
    }
