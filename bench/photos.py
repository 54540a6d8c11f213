"""Real photos for the benches: scikit-image and scikit-learn ship them, no download needed."""

from __future__ import annotations

import io
import random

from PIL import Image
from skimage import data as samples

from mammoth_export.efficientnet import SAMPLE_PHOTOS

# The colour photos scikit-image ships without a download, as used for int8 calibration.
PHOTOS = [*SAMPLE_PHOTOS, "colorwheel"]
HELD_OUT_GREY = ["camera", "moon", "coins", "clock", "brick", "grass", "gravel", "page", "text"]


def photos() -> list[Image.Image]:
    found = []
    for name in PHOTOS:
        try:
            found.append(Image.fromarray(getattr(samples, name)()).convert("RGB"))
        except Exception:
            continue
    return found


def held_out_photos() -> list[Image.Image]:
    """Real photos int8 calibration never saw: scikit-learn's two and scikit-image's grey ones."""
    from sklearn.datasets import load_sample_images

    found = [Image.fromarray(a) for a in load_sample_images().images]
    for name in HELD_OUT_GREY:
        found.append(Image.fromarray(getattr(samples, name)()).convert("RGB"))
    return found


def variants(image: Image.Image, rng: random.Random, count: int) -> list[Image.Image]:
    """Crops, flips and rescales of one photo: neighbours that should stay neighbours."""
    out = []
    for _ in range(count):
        w, h = image.size
        scale = rng.uniform(0.6, 0.95)
        cw, ch = int(w * scale), int(h * scale)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(crop)
    return out


def photo_jpegs(count: int) -> list[bytes]:
    """Distinct ~640x480 JPEGs cut from real photos: realistic decode work."""
    rng = random.Random(2)
    sources = photos()
    out = []
    for i in range(count):
        image = variants(sources[i % len(sources)], rng, 1)[0].resize((640, 480))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85, comment=f"bench {i}".encode())
        out.append(buffer.getvalue())
    return out
