"""Real photos of a few kinds, from scikit-image's bundled data (no download).

Used to calibrate a model's cluster threshold and to test and benchmark clustering on real
photos: three textures (four non-overlapping quarters of each photo), a stereo pair of one
motorcycle, and four faces from the LFW subset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def kind_photos() -> list[tuple[str, Image.Image]]:
    """(kind, RGB image) pairs: 18 photos of 5 kinds."""
    from skimage import data

    photos: list[tuple[str, Image.Image]] = []
    for kind in ("brick", "grass", "gravel"):
        texture = Image.fromarray(getattr(data, kind)()).convert("RGB")
        w, h = texture.size
        for i in range(2):
            for j in range(2):
                box = (i * w // 2, j * h // 2, (i + 1) * w // 2, (j + 1) * h // 2)
                photos.append((kind, texture.crop(box)))
    left, right, _ = data.stereo_motorcycle()  # type: ignore[no-untyped-call]
    photos += [("motorcycle", Image.fromarray(left)), ("motorcycle", Image.fromarray(right))]
    faces = np.load(Path(data.__file__).parent / "lfw_subset.npy")
    for face in faces[:4]:
        photos.append(("face", Image.fromarray((face * 255).astype(np.uint8)).convert("RGB")))
    return photos


def calibrate_threshold(vectors: np.ndarray, kinds: list[str]) -> tuple[float, float, float]:
    """(threshold, lowest same-kind cosine, highest other-kind cosine) of unit vectors.

    The threshold is the middle of the gap; a negative gap means no threshold separates them.
    """
    sims = vectors @ vectors.T
    labels = np.array(kinds)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    lowest_same = float(sims[same & off_diagonal].min())
    highest_other = float(sims[~same].max())
    return (lowest_same + highest_other) / 2, lowest_same, highest_other
