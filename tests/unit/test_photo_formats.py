"""The photo formats people have: HEIC/HEIF, AVIF and animated PNG are images, sniffed by
content; camera RAW files are told apart (by signature, or by a TIFF's first directory) so
that they can be refused by name."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import pytest
from PIL import Image, TiffImagePlugin
from pillow_heif import register_heif_opener

from gateway.upload_rules import SNIFF_BYTES, camera_raw, sniff

register_heif_opener()


def encoded(fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(out, format=fmt, **options)
    return out.getvalue()


def apng() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def tiff(tags: dict[int, tuple[int, object]] | None = None) -> bytes:
    """A little-endian TIFF from Pillow with extra first-directory tags: tag -> (type, value)."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    for number, (kind, value) in (tags or {}).items():
        ifd[number] = value
        ifd.tagtype[number] = kind
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(out, format="TIFF", tiffinfo=ifd)
    return out.getvalue()


def raw_like_tiff() -> bytes:
    """A NEF-like first directory: NewSubfileType 1 (a preview) and SubIFDs, by hand."""
    entries = [(254, 4, 1, 1), (256, 3, 1, 160), (257, 3, 1, 120), (330, 4, 1, 2048)]
    body = struct.pack("<H", len(entries))
    body += b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + body + bytes(64)


@pytest.mark.parametrize(
    ("make", "mime"),
    [
        (lambda: encoded("HEIF"), "image/heic"),
        (lambda: encoded("AVIF"), "image/avif"),
        (apng, "image/apng"),
        (lambda: encoded("WEBP"), "image/webp"),
    ],
    ids=["heic", "avif", "apng", "webp"],
)
def test_phone_formats_are_images(make: Callable[[], bytes], mime: str) -> None:
    found = sniff(make()[:SNIFF_BYTES])
    assert found is not None and (found.kind, found.mime_type) == ("image", mime)


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(32), "Canon CR2"),
        (b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom" + bytes(32), "Canon CR3"),
        (b"FUJIFILMCCD-RAW 0201FF383501" + bytes(32), "Fujifilm RAF"),
        (b"IIRO\x08\x00\x00\x00" + bytes(32), "Olympus ORF"),
        (b"IIU\x00\x08\x00\x00\x00" + bytes(32), "Panasonic RW2"),
    ],
    ids=["cr2", "cr3", "raf", "orf", "rw2"],
)
def test_raw_formats_with_a_signature_are_named(head: bytes, name: str) -> None:
    assert camera_raw(head) == name


def test_dng_and_tiff_based_raw_are_named_and_a_plain_tiff_is_not() -> None:
    dng = tiff({50706: (1, b"\x01\x04\x00\x00")})  # DNGVersion 1.4
    assert camera_raw(dng[:SNIFF_BYTES]) == "Adobe DNG"
    assert camera_raw(raw_like_tiff()) == "a TIFF-based camera RAW (NEF, ARW, PEF, ...)"
    plain = tiff()
    assert camera_raw(plain[:SNIFF_BYTES]) is None
    found = sniff(plain[:SNIFF_BYTES])
    assert found is not None and found.mime_type == "image/tiff"
    # A preview directory alone (a multi-page scan, say) is not RAW without SubIFDs.
    assert camera_raw(tiff({254: (4, 1)})[:SNIFF_BYTES]) is None


@pytest.mark.parametrize(
    "head",
    [b"", b"II*\x00", b"II*\x00\xff\xff\xff\x7f", b"MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(8)],
    ids=["empty", "header-only", "offset-beyond", "count-beyond"],
)
def test_broken_tiff_headers_are_not_raw_and_do_not_raise(head: bytes) -> None:
    assert camera_raw(head) is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "HEIF", "AVIF"])
def test_ordinary_photos_are_not_raw(fmt: str) -> None:
    assert camera_raw(encoded(fmt)[:SNIFF_BYTES]) is None
