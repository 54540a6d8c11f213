"""Perceptual hash: 64-bit DCT pHash as pgvector's bit(64) text, and Hamming distance.

The classic pHash (as in the `imagehash` package): 32x32 grayscale, 2-D DCT-II, the
top-left 8x8 low frequencies, one bit per coefficient above their median. Re-encoding and
resizing move few bits; different pictures differ in about half of them.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from embedder.preprocess import to_rgb

_SIDE = 32
_KEEP = 8
BITS = _KEEP * _KEEP


@cache
def _dct_matrix(n: int) -> NDArray[np.float64]:
    """Unnormalised DCT-II as a matrix (scipy.fft.dct's default scaling), so numpy suffices."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


def dct2(pixels: NDArray[np.float64]) -> NDArray[np.float64]:
    """2-D DCT-II of a square array (rows, then columns)."""
    m = _dct_matrix(pixels.shape[0])
    result: NDArray[np.float64] = m @ pixels @ m.T
    return result


def phash_bits(image: Image.Image) -> str:
    """The image's 64-bit pHash as 64 '0'/'1' characters, row-major over the 8x8 block."""
    # Composite transparency first so the hash is of what a viewer sees.
    gray = to_rgb(image).convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS)
    low = dct2(np.asarray(gray, dtype=np.float64))[:_KEEP, :_KEEP]
    bits = low > np.median(low)
    return "".join("1" if bit else "0" for bit in bits.flat)


def hamming(a: str, b: str) -> int:
    """Number of positions where two equal-length bit strings differ."""
    if len(a) != len(b):
        raise ValueError(f"bit strings differ in length: {len(a)} and {len(b)}")
    return sum(x != y for x, y in zip(a, b, strict=True))
