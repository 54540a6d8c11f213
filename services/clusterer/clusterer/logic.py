"""Pure decisions: which cluster to join, names, link names. No I/O."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

MAX_NAME = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SPACES = re.compile(r"\s+")
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
}


@dataclass(frozen=True)
class Candidate:
    """A cluster near some content: its id, cosine similarity and joining threshold."""

    cluster_id: uuid.UUID
    similarity: float
    threshold: float


def choose(candidates: Sequence[Candidate]) -> Candidate | None:
    """The most similar cluster whose threshold the content reaches, if any."""
    passing = [c for c in candidates if c.similarity >= c.threshold]
    return max(passing, key=lambda c: c.similarity, default=None)


def clean_name(name: str | None) -> str | None:
    """A name as stored: whitespace collapsed, at most MAX_NAME characters; None if empty."""
    if name is None:
        return None
    cleaned = _SPACES.sub(" ", name).strip()[:MAX_NAME].strip()
    return cleaned or None


def unique_name(base: str, taken: Collection[str]) -> str:
    """`base`, or `base 2`, `base 3`, ... whichever is not taken."""
    if base not in taken:
        return base
    n = 2
    while True:
        suffix = f" {n}"
        candidate = base[: MAX_NAME - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


def untitled_name(cluster_id: uuid.UUID) -> str:
    """The placeholder when no label can be had (a model without a text encoder, say)."""
    return f"untitled {cluster_id.hex[:8]}"


def folder(cluster_id: uuid.UUID) -> str:
    """The storage path of a cluster's folder."""
    return f"media/clusters/{cluster_id}"


def link_name(upload_id: uuid.UUID, filename: str | None, mime_type: str) -> str:
    """One link per upload: the upload id (unique) and a safe form of the original name."""
    safe = _UNSAFE.sub("_", filename or "").strip("._")[-80:]
    if not safe:
        return f"{upload_id}{_EXTENSIONS.get(mime_type, '')}"
    return f"{upload_id}_{safe}"


def thumbnail_name(upload_id: uuid.UUID) -> str:
    return f"{upload_id}.jpg"


def normalised(vector: NDArray[np.float32]) -> NDArray[np.float32]:
    norm = float(np.linalg.norm(vector))
    result: NDArray[np.float32] = (vector / norm if norm > 0 else vector).astype(np.float32)
    return result
