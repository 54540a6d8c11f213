"""Decode one image or video file into everything the embedder stores about it.

These functions run inside DecoderPool's worker processes: untrusted bytes are parsed
there, so a decoder that crashes or runs away takes only its worker down. Every way a file
can be bad becomes a `DecodeError` with a message fit for the failure record.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from embedder.manifest import Preprocess
from embedder.phash import phash_bits
from embedder.preprocess import to_model_input, to_rgb

# Formats we accept; the rest of Pillow's plugins (EPS runs Ghostscript, for one) are a
# larger attack surface than they are worth for photos.
# HEIF (HEIC, what iPhones take) through pillow-heif, whose decoder applies the file's own
# rotation and clears the EXIF orientation it has applied, so nothing turns twice.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")
register_heif_opener()
THUMBNAIL_QUALITY = 85
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_EXIF_TAGS = {0x010F: "make", 0x0110: "model", 0x0132: "datetime", 0x0112: "orientation"}
_DATETIME_ORIGINAL = 0x9003
_MAX_EXIF_TEXT = 128
_QUARTER_TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_TURNS = {
    1: Image.Transpose.ROTATE_90,
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
}


class DecodeError(Exception):
    """The file cannot be decoded; the message says why."""


# eq=False: the numpy fields make generated equality ambiguous, and identity is enough.
@dataclass(frozen=True, eq=False)
class Decoded:
    """A decoded image: facts, thumbnail, pHash and model input."""

    width: int
    height: int
    format: str
    exif: dict[str, str | int | float | bool] = field(repr=False)
    thumbnail: bytes = field(repr=False)
    phash: str
    pixels: NDArray[np.float32] = field(repr=False)


@dataclass(frozen=True, eq=False)
class DecodedVideo:
    """A decoded video: facts, first-frame thumbnail and pHash, sampled frames."""

    width: int
    height: int
    duration: float  # seconds; 0.0 when the container does not say
    format: str  # the demuxer's name, as ffprobe's format_name
    codec: str
    thumbnail: bytes = field(repr=False)
    phash: str
    frames: tuple[tuple[float, NDArray[np.float32]], ...] = field(repr=False)


def _reason(error: BaseException, path: str) -> str:
    """The error's text naming the file by its name alone (a stored file's is its sha256):
    failure records name the content, never where storage keeps it."""
    text, name = str(error), os.path.basename(path)
    for where in sorted({path, os.path.abspath(path), os.path.realpath(path)}, key=len)[::-1]:
        text = text.replace(where, name)
    return text


def _check_not_empty(path: str) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise DecodeError(f"cannot read file: {error.strerror or error}") from None
    if size == 0:
        raise DecodeError("empty file (0 bytes)")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DecodeError(
            f"image too large: {width}x{height} is {width * height} pixels, "
            f"more than the limit of {max_pixels} (a decompression bomb?)"
        )


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bytes):
        return None
    text = str(value).replace("\x00", "").strip()
    return text[:_MAX_EXIF_TEXT] or None


def exif_summary(image: Image.Image) -> dict[str, str | int | float | bool]:
    """A few JSON-safe EXIF facts: make, model, datetime, orientation, gps (present or not)."""
    exif = image.getexif()
    facts: dict[str, str | int | float | bool] = {}
    for tag, name in _EXIF_TAGS.items():
        value = exif.get(tag)
        if name == "orientation":
            if isinstance(value, int):
                facts[name] = value
        elif (text := _text(value)) is not None:
            facts[name] = text
    original = _text(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL))
    if original is not None:  # when the picture was taken beats when it was last edited
        facts["datetime"] = original
    facts["gps"] = bool(exif.get_ifd(_GPS_IFD))
    return facts


def thumbnail_jpeg(image: Image.Image, size: int) -> bytes:
    """RGB JPEG bytes with the longest side at most `size`."""
    thumb = to_rgb(image)
    scale = size / max(thumb.size)
    if scale < 1:  # resize returns a new small image; thumbnail() would need a full copy
        new_size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
        thumb = thumb.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


def reduce_on_load(image: Image.Image, short: int, long: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale where that still leaves `short` pixels.

    libjpeg scales in the DCT while decoding, far cheaper than decoding every pixel and
    resizing afterwards: a 12-megapixel photo decodes at 1/8 scale. The short side keeps
    at least `short` pixels and the long side `long` (what the model and the thumbnail
    need), so only the resize to those sizes starts from fewer pixels. Other formats
    ignore it.
    """
    width, height = image.size
    scale = min(min(width, height) / short, max(width, height) / long)
    if scale >= 2:
        image.draft(None, (math.ceil(width / scale), math.ceil(height / scale)))


def _open_image(
    path: str, max_pixels: int, sides: tuple[int, int]
) -> tuple[Image.Image, tuple[int, int], str, dict[str, Any]]:
    """Open, check the declared size, load the first frame (reduced to `sides` where a JPEG
    allows); return it upright, its full upright size, its format and EXIF."""
    try:
        with Image.open(path, formats=[f for f in IMAGE_FORMATS if f in Image.OPEN]) as opened:
            _check_pixels(opened.width, opened.height, max_pixels)
            size = opened.size
            reduce_on_load(opened, *sides)
            opened.load()  # decodes the first frame of an animation; truncation fails here
            exif = exif_summary(opened)
            fmt = opened.format or "unknown"
            ImageOps.exif_transpose(opened, in_place=True)  # no copy of a large image
            if exif.get("orientation") in _QUARTER_TURNED:
                size = size[::-1]
            return opened, size, fmt, exif
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(
            f"unsupported or unrecognised image format (accepted: {', '.join(IMAGE_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecodeError(f"image too large: {_reason(error, path)}") from None
    except MemoryError:
        raise DecodeError("image needs more memory than the decoder may use") from None
    except OSError as error:
        if "truncated" in str(error):
            raise DecodeError(f"truncated image file: {_reason(error, path)}") from None
        raise DecodeError(f"corrupt image data: {_reason(error, path)}") from None
    except Exception as error:  # Pillow's plugins raise many types for bad data
        reason = f"{type(error).__name__}: {_reason(error, path)}"
        raise DecodeError(f"corrupt image data: {reason}") from None


def decode_image(
    path: str, p: Preprocess, *, thumbnail_size: int = 256, max_pixels: int = 50_000_000
) -> Decoded:
    """Decode an image file: size after EXIF orientation, format, EXIF, thumbnail, pHash, input."""
    _check_not_empty(path)
    # This runs in a worker process that decodes one file at a time, so Pillow's globals are
    # ours to set; they are restored for callers in the main process (tests).
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image, (width, height), fmt, exif = _open_image(
                path, max_pixels, (max(p.resize_to, p.image_size), thumbnail_size)
            )
        rgb = to_rgb(image)
        return Decoded(
            width=width,
            height=height,
            format=fmt,
            exif=exif,
            thumbnail=thumbnail_jpeg(rgb, thumbnail_size),
            phash=phash_bits(rgb),
            pixels=to_model_input(rgb, p),
        )
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("image needs more memory than the decoder may use") from None
    except Exception as error:  # decoded but unusable (an odd mode, say) is still a bad file
        reason = f"{type(error).__name__}: {_reason(error, path)}"
        raise DecodeError(f"cannot process image: {reason}") from None
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _upright(frame: av.VideoFrame) -> Image.Image:
    """The frame as RGB, turned as the display matrix says (phones record sideways)."""
    image: Image.Image = frame.to_image()  # type: ignore[no-untyped-call]
    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
    return image.transpose(_TURNS[turns]) if turns else image


def _targets(stream: av.video.stream.VideoStream, keyframes: list[int], count: int) -> list[int]:
    """Up to `count` pts to sample: keyframes when there are enough, else evenly spaced."""
    if len(keyframes) >= count:
        picks = np.linspace(0, len(keyframes) - 1, count).round().astype(int)
        return [keyframes[i] for i in picks]
    start = stream.start_time or 0
    span = stream.duration or (keyframes[-1] - start if keyframes else 0)
    return [start + span * i // count for i in range(count)]


def _sample_frames(
    container: av.container.InputContainer, count: int
) -> Iterator[tuple[float, Image.Image]]:
    """Up to `count` frames at keyframes or evenly spaced times, as (seconds, image)."""
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1  # one decode per process; threads cost address space
    keyframes = sorted(
        packet.pts
        for packet in container.demux(stream)
        if packet.is_keyframe and packet.pts is not None
    )
    start, base = stream.start_time or 0, float(stream.time_base or 0)
    last_pts: int | None = None
    for target in _targets(stream, keyframes, count):
        container.seek(target, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None or frame.pts < target:
                continue
            if frame.pts != last_pts:  # short clips can map two targets to one frame
                yield (frame.pts - start) * base, _upright(frame)
                last_pts = frame.pts
            break


def decode_video_keyframes(
    path: str, p: Preprocess, *, max_frames: int = 8
) -> list[tuple[float, NDArray[np.float32]]]:
    """Model inputs for up to `max_frames` keyframes (or evenly spaced frames), with seconds."""
    return list(decode_video(path, p, max_frames=max_frames).frames)


def decode_video(
    path: str,
    p: Preprocess,
    *,
    thumbnail_size: int = 256,
    max_frames: int = 8,
    max_pixels: int = 50_000_000,
) -> DecodedVideo:
    """Decode a video file: facts, thumbnail and pHash of the first frame, sampled frames."""
    _check_not_empty(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError("no video stream in the file")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            _check_pixels(ctx.width, ctx.height, max_pixels)
            first: Image.Image | None = None
            frames = []
            for seconds, image in _sample_frames(container, max_frames):
                if first is None:  # the only full frame kept: the thumbnail's
                    first = image
                frames.append((seconds, to_model_input(image, p)))
            if first is None:
                raise DecodeError("no decodable video frames")
            base = stream.time_base
            duration = float(stream.duration * base) if stream.duration and base else 0.0
            if not duration and container.duration:
                duration = container.duration / av.time_base
            return DecodedVideo(
                width=first.width,
                height=first.height,
                duration=duration,
                format=container.format.name,
                codec=ctx.name,
                thumbnail=thumbnail_jpeg(first, thumbnail_size),
                phash=phash_bits(first),
                frames=tuple(frames),
            )
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("video needs more memory than the decoder may use") from None
    except av.FFmpegError as error:
        raise DecodeError(f"corrupt or unsupported video: {_reason(error, path)}") from None
    except Exception as error:
        reason = f"{type(error).__name__}: {_reason(error, path)}"
        raise DecodeError(f"corrupt video data: {reason}") from None
