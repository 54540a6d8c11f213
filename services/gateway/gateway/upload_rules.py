"""Pure decisions about what was uploaded: its kind, its limits, its JSON, its fingerprint."""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import filetype
import orjson

from common import jsontext
from gateway.errors import ApiError, no_nul
from gateway.names import COLLECTION_NAME, OWNER, OWNER_RULE
from gateway.settings import GatewaySettings

Kind = Literal["image", "video", "json"]

# What phones and cameras produce: JPEG, HEIC/HEIF (iPhones), AVIF, PNG (APNG: its first
# frame), GIF and WebP (animated: the first frame), BMP and TIFF.
IMAGE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/apng",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/tiff",
        "image/heic",
        "image/heif",
        "image/avif",
    }
)
VIDEO_TYPES = frozenset(
    {"video/mp4", "video/quicktime", "video/webm", "video/x-matroska", "video/x-msvideo"}
)
# Enough for a TIFF's first directory (camera RAW files are told apart there) and for the
# brands of an ISO media file.
SNIFF_BYTES = 4096
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# A collection name: a lower-case identifier (it becomes part of a table name).
_JSON_START = (b"{", b"[")
_DISPOSITION_PARAM = re.compile(
    r';\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)'
)
_QUOTED_PAIR = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Sniffed:
    kind: Kind
    mime_type: str


def sniff(head: bytes) -> Sniffed | None:
    """The kind of content from its first bytes (never from its name), or None."""
    guess = filetype.guess(head)
    if guess is not None:
        if guess.mime in IMAGE_TYPES:
            return Sniffed("image", guess.mime)
        if guess.mime in VIDEO_TYPES:
            return Sniffed("video", guess.mime)
        return None
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in _JSON_START:
        return Sniffed("json", "application/json")
    return None


_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
_DNG_VERSION, _SUB_IFDS, _NEW_SUBFILE_TYPE = 50706, 330, 254
# Camera RAW formats with a signature of their own, at the start of the file.
_RAW_SIGNATURES = (
    (b"FUJIFILMCCD-RAW", "Fujifilm RAF"),
    (b"IIRO", "Olympus ORF"),
    (b"IIRS", "Olympus ORF"),
    (b"MMOR", "Olympus ORF"),
    (b"IIU\x00", "Panasonic RW2"),
    (b"FOVb", "Sigma X3F"),
    (b"\x00MRM", "Minolta MRW"),
)


def camera_raw(head: bytes) -> str | None:
    """The camera RAW format `head` begins, or None. RAW files are refused by name: what an
    image decoder would show of one is its small embedded preview, not the photograph."""
    for signature, name in _RAW_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp" and head[8:12] == b"crx ":
        return "Canon CR3"
    if head[:4] not in _TIFF_HEADERS:
        return None
    if head[8:10] == b"CR":
        return "Canon CR2"
    tags = _tiff_first_directory(head)
    if _DNG_VERSION in tags:
        return "Adobe DNG"
    # NEF, ARW, PEF, SRW, ...: the first directory is a reduced-resolution preview
    # (NewSubfileType 1) and the sensor data hangs below it (SubIFDs).
    if _SUB_IFDS in tags and tags.get(_NEW_SUBFILE_TYPE) == 1:
        return "a TIFF-based camera RAW (NEF, ARW, PEF, ...)"
    return None


def _tiff_first_directory(head: bytes) -> dict[int, int]:
    """Tag -> its first inline value (SHORT or LONG), for the entries of a TIFF's first
    directory that lie within `head`."""
    order = "<" if head[:2] == b"II" else ">"
    if len(head) < 8:
        return {}
    (offset,) = struct.unpack_from(f"{order}I", head, 4)
    if offset + 2 > len(head):
        return {}
    (count,) = struct.unpack_from(f"{order}H", head, offset)
    tags: dict[int, int] = {}
    for index in range(min(count, 512)):
        at = offset + 2 + 12 * index
        entry = head[at : at + 12]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(f"{order}HH", entry[:4])
        if kind == 3:  # SHORT
            (value,) = struct.unpack(f"{order}H", entry[8:10])
        elif kind == 4:  # LONG
            (value,) = struct.unpack(f"{order}I", entry[8:12])
        else:
            value = -1
        tags[tag] = value
    return tags


def parse_disposition(header: str) -> tuple[str | None, str | None]:
    """(name, filename) of a multipart part's Content-Disposition (RFC 7578).

    Parsed here because aiohttp's parser, built on the email package, was the largest cost of
    an upload. Handles quoted values with escapes and RFC 5987 `filename*`.
    """
    params: dict[str, str] = {}
    for key, raw in _DISPOSITION_PARAM.findall(header):
        value = raw.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        params.setdefault(key.lower(), value)
    filename = params.get("filename")
    extended = params.get("filename*")
    if extended and extended.count("'") >= 2:
        charset, _, encoded = extended.split("'", 2)
        try:
            filename = unquote(encoded, encoding=charset or "utf-8", errors="replace")
        except LookupError:  # an unknown charset: keep the plain filename
            pass
    return params.get("name"), filename


def limit_for(kind: Kind, settings: GatewaySettings) -> int:
    """The largest accepted size of one upload of this kind."""
    return {
        "image": settings.max_image_bytes,
        "video": settings.max_video_bytes,
        "json": settings.max_json_bytes,
    }[kind]


def too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, f"{what} is larger than the limit of {limit} bytes", {"limit": limit})


def text_field(data: bytes, name: str) -> str:
    """A form field's value: UTF-8 text without NUL characters."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"field {name!r} is not valid UTF-8") from None
    return no_nul(text, f"field {name!r}")


def json_documents(
    value: Any, what: str, settings: GatewaySettings, envelope: bool = False
) -> list[bytes]:
    """One canonical document per upload: an array becomes one per element. With `envelope`
    (a JSON body or the payload field), `{"payload": [...]}` is that array."""
    if envelope and isinstance(value, dict) and len(value) == 1 and "payload" in value:
        if isinstance(value["payload"], list):
            value = value["payload"]
            what = f"{what}.payload"
    if isinstance(value, list):
        if not value:
            raise ApiError(400, f"{what} is an empty JSON array")
        if len(value) > settings.max_json_items:
            raise ApiError(
                413,
                f"{what} has {len(value)} elements; the limit is {settings.max_json_items}",
                {"limit": settings.max_json_items},
            )
        items = value
    else:
        items = [value]
    documents = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            where = f"{what}[{index}]" if isinstance(value, list) else what
            raise ApiError(400, f"{where} must be a JSON object, not {type(item).__name__}")
        documents.append(jsontext.dumps(item))
    return documents


def check_owner(value: str | None) -> str:
    owner = (value or "").strip() or "anonymous"
    if not OWNER.match(owner):
        raise ApiError(400, f"owner must be {OWNER_RULE}")
    return owner


def check_idempotency_key(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        raise ApiError(400, "idempotency_key must be 1-255 printable ASCII characters")
    return value


def check_collection(value: str | None) -> str | None:
    """The collection an ingest names, or None (the schemer chooses one)."""
    if value is None or value == "":
        return None
    if not COLLECTION_NAME.match(value):
        raise ApiError(
            400,
            "collection must be a lower-case identifier: a letter, then up to 62 letters,"
            " digits or underscores",
            {"pattern": COLLECTION_NAME.pattern},
        )
    return value


def check_comments(value: str | None) -> str | None:
    if value is not None and len(value) > 4096:
        raise ApiError(400, "comments are longer than 4096 characters")
    return value or None


def clean_filename(value: str | None) -> str | None:
    """The last path component of a client-given name, without control characters."""
    if not value:
        return None
    name = re.split(r"[\\/]", value)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:255]
    return name or None


def fingerprint(
    owner: str,
    comments: str | None,
    items: list[tuple[str | None, str]],
    collection: str | None = None,
) -> str:
    """What makes two requests 'the same' for idempotency: fields and content hashes."""
    fields: dict[str, Any] = {"owner": owner, "comments": comments, "items": items}
    if collection is not None:  # absent otherwise: earlier keys keep their fingerprints
        fields["collection"] = collection
    canonical = orjson.dumps(fields)
    return hashlib.sha256(canonical).hexdigest()
