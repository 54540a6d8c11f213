"""Pixels to model input: pure Pillow/NumPy, no I/O.

Shortest-edge resizing reproduces transformers' CLIPImageProcessor (PIL backend) step by
step: RGB with transparency composited on white, Pillow resize of the uint8 image to the
size `get_resize_output_image_size(..., default_to_square=False)` computes, centre crop
with its rounding (zero padding when the image is smaller than the crop), rescale in
float64, normalise in float32. The same operations in the same order give the same floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from embedder.manifest import Preprocess

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}
# Beyond this aspect ratio the full resize would be huge (a 1x50M-pixel strip would become
# 224 x 11 billion), so only the crop window is resampled (Pillow's `box`). That can differ
# from resize-then-crop by a few levels in some pixels; no real photo is this long.
MAX_EXACT_ASPECT = 64


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as RGB, transparency composited on white (as transformers does)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def shortest_edge_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, the long side truncated as in HF."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(short_side * long / short)
    return (short_side, new_long) if width <= height else (new_long, short_side)


def _center_crop(pixels: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Centre crop an HWC array to size x size, zero-padding a smaller image first."""
    height, width = pixels.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    if top >= 0 and left >= 0:
        return pixels[top : top + size, left : left + size]
    # transformers pads with zeros, centred with ceil, then crops from the padded image.
    new_h, new_w = max(size, height), max(size, width)
    pad_top, pad_left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
    padded = np.zeros((new_h, new_w, pixels.shape[2]), dtype=pixels.dtype)
    padded[pad_top : pad_top + height, pad_left : pad_left + width] = pixels
    top, left = top + pad_top, left + pad_left
    return padded[top : top + size, left : left + size]


def _resize_crop(image: Image.Image, p: Preprocess) -> NDArray[np.uint8]:
    """Resize and crop to the model's square, as uint8 HWC."""
    resample = _RESAMPLE[p.interpolation]
    size = p.image_size
    if p.resize == "squash":
        return np.asarray(image.resize((size, size), resample))
    width, height = image.size
    new_w, new_h = shortest_edge_size(width, height, p.resize_to)
    if max(new_w, new_h) <= MAX_EXACT_ASPECT * p.resize_to or min(new_w, new_h) < size:
        return _center_crop(np.asarray(image.resize((new_w, new_h), resample)), size)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(image.resize((size, size), resample, box=box))


@cache
def _levels(rescale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> NDArray[np.float32]:
    """The normalised float for each channel and uint8 level: [channels, 256]."""
    # Same dtypes as transformers: rescale in float64, then normalise in float32.
    levels = (np.arange(256, dtype=np.float64) * rescale).astype(np.float32)
    means = np.asarray(mean, dtype=np.float32)[:, None]
    stds = np.asarray(std, dtype=np.float32)[:, None]
    table: NDArray[np.float32] = (levels[None, :] - means) / stds
    return table


def to_model_input(image: Image.Image, p: Preprocess) -> NDArray[np.float32]:
    """One image as the model's float32 [3, S, S] input."""
    pixels = _resize_crop(to_rgb(image), p).transpose(2, 0, 1)
    # A uint8 pixel has 256 possible values: look the result up (5x faster, same floats).
    table = _levels(p.rescale, tuple(p.mean), tuple(p.std))
    return np.stack([table[channel][pixels[channel]] for channel in range(3)])


def batch(arrays: Sequence[NDArray[np.float32]]) -> NDArray[np.float32]:
    """Stack [3, S, S] inputs into one [N, 3, S, S] batch."""
    if not arrays:
        raise ValueError("an empty batch has no shape")
    return np.stack(arrays).astype(np.float32, copy=False)
