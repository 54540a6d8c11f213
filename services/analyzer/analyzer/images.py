"""The image the VLM sees: oriented, at most VLM_MAX_IMAGE_PX on its long side, as JPEG."""

from __future__ import annotations

import io

from PIL import Image, ImageOps
from pillow_heif import register_heif_opener

# The embedder decoded this content already, within its limits; this is a second guard.
MAX_PIXELS = 100_000_000
# HEIC photos, as the embedder reads them (embedder/decode.py).
register_heif_opener()


def for_vlm(data: bytes, max_px: int) -> bytes:
    """JPEG bytes of the image, EXIF-oriented and downscaled to fit max_px x max_px."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (max_px, max_px))  # JPEG: decode at a reduced scale when it can
        oriented = ImageOps.exif_transpose(image).convert("RGB")
    oriented.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    oriented.save(out, "JPEG", quality=88)
    return out.getvalue()
