"""The hostile-input corpus: requests nobody should send, by group, and what a correct
gateway does with each.

A `Case` is an HTTP request built by hand (bytes, so a malformed body stays malformed) with
the outcomes it may end in: "4xx" (a JSON error, status 400-499, with a request id), or
"accepted" followed by what the job may end as ("failed": recorded as a failure the user can
read; "done": the input was harmless after all, a polyglot that is a valid PNG, say). A
`RawCase` goes over a socket as is, for what an HTTP client library will not send; the server
must answer 4xx or close the connection. Paths may hold {object}, {job}, {cluster},
{schema} and {dlq}: ids that exist, of the corpus's own owner, filled in when it runs.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import orjson
from PIL import Image

BOUNDARY = "abuse-boundary-7d1f"
FOUR = frozenset({"4xx"})
HANDLED = frozenset({"4xx", "failed"})  # refused, or accepted and recorded as failed
ANY_END = frozenset({"4xx", "failed", "done"})
ANSWERED = frozenset({"4xx", "2xx"})  # a clean refusal, or an ordinary answer


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: frozenset[str] = FOUR
    status: int | None = None  # the exact 4xx, where one is the only right answer
    key: str | None = "alice"  # None: no API key at all


@dataclass(frozen=True)
class RawCase:
    group: str
    name: str
    data: bytes


def png(size: tuple[int, int] = (16, 16), colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(size: tuple[int, int] = (32, 32), **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 120, 200)).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def gif_frames(count: int) -> bytes:
    frames = [Image.new("P", (8, 8), n % 256) for n in range(count)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=10)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat or zlib.compress(b"\0" * 4096))
        + _chunk(b"IEND", b"")
    )


def png_with_chunk(kind: bytes, data: bytes) -> bytes:
    base = png()
    return base[:33] + _chunk(kind, data) + base[33:]


def multipart(*parts: tuple[str, bytes], boundary: str = BOUNDARY) -> bytes:
    """Parts given as (headers, body): the headers exactly as written."""
    out = b""
    for headers, body in parts:
        out += f"--{boundary}\r\n{headers}\r\n\r\n".encode("utf-8", "surrogateescape") + body
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def file_part(filename: str, data: bytes, mime: str = "image/png") -> tuple[str, bytes]:
    return (
        f'Content-Disposition: form-data; name="files[]"; filename="{filename}"\r\n'
        f"Content-Type: {mime}",
        data,
    )


def text_part(name: str, value: bytes) -> tuple[str, bytes]:
    return (f'Content-Disposition: form-data; name="{name}"', value)


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
JSON = {"Content-Type": "application/json"}


def upload(
    group: str,
    name: str,
    data: bytes,
    *,
    filename: str = "x.png",
    mime: str = "image/png",
    expect: frozenset[str] = ANY_END,
    status: int | None = None,
) -> Case:
    body = multipart(file_part(filename, data, mime))
    return Case(group, name, "POST", "/api/v1/ingest", body, MULTIPART, expect, status)


def payload(
    name: str, raw: bytes, *, expect: frozenset[str] = FOUR, collection: bytes = b"abuse"
) -> Case:
    body = multipart(text_part("payload", raw), text_part("collection", collection))
    return Case("json", name, "POST", "/api/v1/ingest", body, MULTIPART, expect)


def image_cases() -> list[Case]:
    good_png, good_jpeg = png(), jpeg()
    zip_tail = b"PK\x03\x04" + b"\0" * 26 + b"evil.php<?php system($_GET['c']); ?>"
    exif_bad = Image.Exif()
    exif_bad[0x0112] = 9  # an orientation that does not exist
    cases = [
        ("empty file", b"", HANDLED),
        ("one byte", b"\x89", HANDLED),
        ("PNG signature only", good_png[:8], HANDLED),
        ("PNG cut at its header", good_png[:30], HANDLED),
        ("PNG cut in half", good_png[: len(good_png) // 2], HANDLED),
        ("PNG with a bad CRC", good_png[:29] + b"\0\0\0\0" + good_png[33:], HANDLED),
        ("JPEG start marker only", good_jpeg[:2], HANDLED),
        ("JPEG cut in half", good_jpeg[: len(good_jpeg) // 2], ANY_END),
        ("JPEG without its end marker", good_jpeg[:-2], ANY_END),
        ("PNG bomb header 100000x100000", png_claiming(100_000, 100_000), HANDLED),
        ("PNG bomb header 2^31-1 wide", png_claiming(2**31 - 1, 1), HANDLED),
        ("PNG zero by zero", png_claiming(0, 0), HANDLED),
        (
            "PNG 30000x30000 of zeros",
            png_claiming(30_000, 30_000, zlib.compress(bytes(2_000_000), 9)),
            HANDLED,
        ),
        (
            "PNG zTXt bomb",
            png_with_chunk(b"zTXt", b"c\0\0" + zlib.compress(bytes(40_000_000), 9)),
            ANY_END,
        ),
        (
            "PNG with 2000 tEXt chunks",
            png()[:33] + _chunk(b"tEXt", b"k\0v") * 2000 + png()[33:],
            ANY_END,
        ),
        ("GIF claiming 65535x65535", b"GIF89a\xff\xff\xff\xff\x00\x00\x00" + b"\x3b", HANDLED),
        ("GIF of 1000 frames", gif_frames(1000), ANY_END),
        (
            "BMP claiming 60000x60000",
            b"BM"
            + struct.pack(
                "<IHHIIiiHHIIiiII", 0, 0, 0, 54, 40, 60000, 60000, 1, 24, 0, 0, 0, 0, 0, 0
            ),
            HANDLED,
        ),
        ("WebP header, garbage body", b"RIFF\x10\0\0\0WEBPVP8 " + b"\xff" * 32, HANDLED),
        ("HEIC brand, garbage body", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, HANDLED),
        ("AVIF brand, garbage body", b"\0\0\0\x18ftypavif\0\0\0\0mif1avif" + b"\0" * 64, HANDLED),
        ("JPEG with an impossible EXIF orientation", jpeg(exif=exif_bad.tobytes()), ANY_END),
        (
            "JPEG with a PHP comment (polyglot)",
            good_jpeg[:2]
            + b"\xff\xfe\x00\x20<?php system($_GET[1]); ?>\0\0\0\0\0\0"
            + good_jpeg[2:],
            ANY_END,
        ),
        ("JPEG with a ZIP appended (polyglot)", good_jpeg + zip_tail, ANY_END),
        (
            "PNG with HTML appended (polyglot)",
            good_png + b"<html><script>alert(1)</script></html>",
            ANY_END,
        ),
        (
            "GIF that is also JavaScript",
            b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=alert(1);" + b"\x3b",
            HANDLED,
        ),
        ("HTML sent as image/png", b"<!doctype html><script>alert(1)</script>", HANDLED),
        (
            "SVG with a script",
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            HANDLED,
        ),
        ("an ELF executable", b"\x7fELF\x02\x01\x01" + b"\0" * 57, HANDLED),
        ("a ZIP archive", zip_tail, HANDLED),
        ("PNG one pixel by 60000", png((1, 20_000)), ANY_END),
        ("1x1 PNG", png((1, 1)), ANY_END),
        (
            "MP4 box header, garbage",
            b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41" + b"\xde\xad" * 64,
            HANDLED,
        ),
    ]
    out = [upload("images", name, data, expect=expect) for name, data, expect in cases]
    raw = (
        b"II*\0\x08\0\0\0"
        + struct.pack("<H", 1)
        + struct.pack("<HHII", 50706, 1, 4, 0x00000401)
        + b"\0\0\0\0"
    )
    out.append(
        upload(
            "images",
            "a RAW (DNG) camera file",
            raw,
            filename="x.dng",
            mime="image/x-adobe-dng",
            expect=FOUR,
            status=415,
        )
    )
    out.append(
        upload(
            "images",
            "an image over MAX_IMAGE_BYTES",
            b"\x89PNG\r\n\x1a\n" + bytes(3 * 1024 * 1024),
            expect=FOUR,
            status=413,
        )
    )
    out.append(
        upload(
            "images",
            "PNG bytes named .exe, sent as application/x-msdownload",
            good_png,
            filename="setup.exe",
            mime="application/x-msdownload",
        )
    )
    return out


def filename_cases() -> list[Case]:
    names = [
        ("traversal", "../../../../etc/passwd"),
        ("Windows traversal", "..\\..\\..\\windows\\system32\\config\\sam"),
        ("absolute path", "/etc/shadow"),
        ("drive path", "C:\\boot.ini"),
        ("percent-encoded traversal", "%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        ("a NUL byte", "a\x00b.png"),
        ("terminal escapes", "\x1b[31mred\x1b[0m.png"),
        ("control characters", "\x01\x02\x07\x08.png"),
        ("a tab and a DEL", "a\tb\x7f.png"),
        ("right-to-left override", "photo\u202egnp.exe"),
        ("5000 characters", "a" * 5000 + ".png"),
        ("empty", ""),
        ("a dot", "."),
        ("two dots", ".."),
        ("a reserved device name", "CON.png"),
        ("quotes and a semicolon", 'a"; name="owner.png'),
        ("Cyrillic", "фото.png"),
        ("emoji", "🐱🐱.png"),
        ("a lone surrogate", "a\udcff.png"),
        ("shell metacharacters", "$(reboot);`id`|x.png"),
    ]
    out = [upload("filenames", name, png(), filename=value) for name, value in names]
    star = "Content-Disposition: form-data; name=\"files[]\"; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd\r\nContent-Type: image/png"
    out.append(
        Case(
            "filenames",
            "RFC 5987 filename* traversal",
            "POST",
            "/api/v1/ingest",
            multipart((star, png())),
            MULTIPART,
            ANY_END,
        )
    )
    return out


def multipart_cases() -> list[Case]:
    image = file_part("x.png", png())
    no_boundary = {"Content-Type": "multipart/form-data"}
    cases = [
        ("no boundary parameter", multipart(image), no_boundary, FOUR),
        ("a boundary the body does not use", multipart(image, boundary="other"), MULTIPART, FOUR),
        ("no closing boundary", multipart(image)[: -len(f"--{BOUNDARY}--\r\n")], MULTIPART, FOUR),
        ("cut mid-part", multipart(image)[:120], MULTIPART, FOUR),
        (
            "a part without Content-Disposition",
            multipart(("Content-Type: image/png", png())),
            MULTIPART,
            FOUR,
        ),
        (
            "Content-Disposition without a name",
            multipart(('Content-Disposition: form-data; filename="x.png"', png())),
            MULTIPART,
            FOUR,
        ),
        ("an unknown field", multipart(image, text_part("rm -rf", b"/")), MULTIPART, FOUR),
        ("no files and no payload", multipart(text_part("owner", b"alice")), MULTIPART, FOUR),
        (
            "owner given twice",
            multipart(image, text_part("owner", b"alice"), text_part("owner", b"bob")),
            MULTIPART,
            FOUR,
        ),
        (
            "101 files (over MAX_FILES_PER_REQUEST)",
            multipart(*[file_part(f"{n}.png", png()) for n in range(101)]),
            MULTIPART,
            FOUR,
        ),
        (
            "3000 empty fields",
            multipart(*[text_part("comments", b"") for _ in range(3000)]),
            MULTIPART,
            FOUR,
        ),
        (
            "a 100 kB part header",
            multipart(
                (
                    f'Content-Disposition: form-data; name="files[]"; filename="{"a" * 100_000}.png"',
                    png(),
                )
            ),
            MULTIPART,
            FOUR,
        ),
        (
            "a nested multipart/mixed part",
            multipart(
                (
                    'Content-Disposition: form-data; name="files[]"\r\nContent-Type: multipart/mixed; boundary=inner',
                    b"--inner\r\n\r\nx\r\n--inner--",
                )
            ),
            MULTIPART,
            ANY_END,
        ),
        ("an empty body", b"", MULTIPART, FOUR),
        (
            "a 300-character boundary",
            multipart(image, boundary="b" * 300),
            {"Content-Type": f"multipart/form-data; boundary={'b' * 300}"},
            FOUR,
        ),
        (
            "a garbage part content type",
            multipart(file_part("x.png", png(), mime="\x00\x01/;;;")),
            MULTIPART,
            ANY_END,
        ),
        (
            "comments over MAX_FIELD_BYTES",
            multipart(image, text_part("comments", b"c" * 200_000)),
            MULTIPART,
            FOUR,
        ),
        (
            "owner in invalid UTF-8",
            multipart(image, text_part("owner", b"\xff\xfe")),
            MULTIPART,
            FOUR,
        ),
        ("owner with a NUL", multipart(image, text_part("owner", b"al\x00ice")), MULTIPART, FOUR),
        (
            "comments with a NUL",
            multipart(image, text_part("comments", b"a\x00b")),
            MULTIPART,
            FOUR,
        ),
        (
            "a 10000-character idempotency key",
            multipart(image, text_part("idempotency_key", b"k" * 10_000)),
            MULTIPART,
            FOUR,
        ),
        (
            "an idempotency key with a NUL",
            multipart(image, text_part("idempotency_key", b"k\x00k")),
            MULTIPART,
            FOUR,
        ),
        (
            "a form that is urlencoded garbage",
            b"%%%&&&===",
            {"Content-Type": "application/x-www-form-urlencoded"},
            FOUR,
        ),
        ("a content type nobody sends", b"hello", {"Content-Type": "text/x-nonsense"}, FOUR),
        ("no content type at all", png(), {}, FOUR),
    ]
    return [Case("multipart", n, "POST", "/api/v1/ingest", b, h, e) for n, b, h, e in cases]


def json_cases() -> list[Case]:
    deep = b"[" * 100_000 + b"]" * 100_000
    cases: list[tuple[str, bytes]] = [
        ("nested 100000 deep", deep),
        ("nested 65 deep (one over the limit)", b'{"a":' * 65 + b"1" + b"}" * 65),
        ("2000 items (over MAX_JSON_ITEMS)", orjson.dumps([{"n": n} for n in range(2000)])),
        ("a 2 MB string (over MAX_JSON_BYTES)", orjson.dumps({"s": "x" * 2_000_000})),
        ("NaN", b'{"a": NaN}'),
        ("Infinity", b'{"a": Infinity}'),
        ("a number beyond double range", b'{"a": 1e400}'),
        ("invalid UTF-8", b'{"a": "\xff\xfe"}'),
        ("overlong UTF-8", b'{"a": "\xc0\xaf"}'),
        ("a lone surrogate escape", b'{"a": "\\ud800"}'),
        ("a NUL in a key", b'{"a\\u0000b": 1}'),
        ("a NUL in a value", b'{"a": "x\\u0000y"}'),
        ("trailing garbage", b'{"a": 1} {"b": 2}'),
        ("a trailing comma", b'{"a": 1,}'),
        ("single quotes", b"{'a': 1}"),
        ("an empty payload", b""),
        ("only whitespace", b"   \n\t "),
        ("a bare scalar", b"42"),
        ("null", b"null"),
        ("an array of scalars", b"[1, 2, 3]"),
        ("an empty array", b"[]"),
        ("an unterminated string", b'{"a": "'),
        ("a comment", b'{"a": 1 /* hi */}'),
    ]
    out = [payload(n, raw) for n, raw in cases]
    accepted = [
        ("a UTF-8 byte order mark", b'\xef\xbb\xbf{"a": 1}'),
        ("duplicate keys", b'{"a": 1, "a": 2}'),
        (
            "2^64 and a 100-digit integer",
            b'{"big": 18446744073709551616, "huge": 1' + b"0" * 100 + b"}",
        ),
        ("minus zero", b'{"z": -0.0}'),
        ("an empty object", b"{}"),
        ("SQL in the keys", orjson.dumps({'"; DROP TABLE uploads; --': 1, "a' OR '1'='1": 2})),
        ("a key of 10000 characters", orjson.dumps({"k" * 10_000: 1})),
        ("an object of 5000 keys", orjson.dumps({f"k{n}": n for n in range(5000)})),
        (
            "every type in one field across documents",
            orjson.dumps(
                [{"v": 1}, {"v": "s"}, {"v": [1]}, {"v": {"x": 1}}, {"v": None}, {"v": True}]
            ),
        ),
        (
            "keys that are SQL reserved words",
            orjson.dumps({"select": 1, "from": 2, "user": 3, "order": 4, "oid": 5, "ctid": 6}),
        ),
        ("keys differing only in case", orjson.dumps({"Name": 1, "name": 2, "NAME": 3})),
    ]
    out += [payload(n, raw, expect=ANY_END) for n, raw in accepted]
    collections = [
        ("a traversal collection name", b"../../etc"),
        ("SQL in the collection name", b"a; DROP TABLE uploads"),
        ("a 200-character collection name", b"c" * 200),
        ("a collection name with a NUL", b"a\x00b"),
        ("a collection name in invalid UTF-8", b"\xff"),
        ("a collection name with spaces", b"a b c"),
    ]
    out += [payload(n, b'{"a": 1}', collection=c, expect=FOUR) for n, c in collections]
    # Quoted identifiers in the collections' own schema; an empty name means no collection.
    for n, c in (("a system schema's name", b"pg_catalog"), ("an empty collection name", b"")):
        out.append(payload(n, b'{"a": 1}', collection=c, expect=ANY_END))
    out.append(Case("json", "a JSON body, nested too deep", "POST", "/api/v1/ingest", deep, JSON))
    out.append(
        Case(
            "json",
            "a JSON body in invalid UTF-8",
            "POST",
            "/api/v1/ingest",
            b'{"payload": "\xff"}',
            JSON,
        )
    )
    return out


def search_cases() -> list[Case]:
    def get(name: str, query: str, expect: frozenset[str] = FOUR) -> Case:
        return Case("search", name, "GET", f"/api/v1/search?{query}", expect=expect)

    def post(name: str, body: bytes, headers: dict[str, str]) -> Case:
        return Case("search", name, "POST", "/api/v1/search", body, headers)

    return [
        get("no query at all", ""),
        get("a 100 kB query", "query=" + "a" * 100_000),
        get("a NUL in the query", "query=a%00b"),
        get("invalid UTF-8 in the query", "query=%ff%fe"),
        get("like= not a UUID", "like=not-a-uuid"),
        get("like= a UUID nobody has", "like=00000000-0000-0000-0000-000000000000"),
        get("both query and like", "query=a&like={object}"),
        get("limit=-1", "like={object}&limit=-1"),
        get("limit=0", "like={object}&limit=0"),
        get("limit=10^20", "like={object}&limit=100000000000000000000"),
        get("limit=abc", "like={object}&limit=abc"),
        get("offset=-1", "like={object}&offset=-1"),
        get("threshold=nan", "like={object}&threshold=nan"),
        get("threshold=2", "like={object}&threshold=2"),
        get("5000 tags", "like={object}&tags=" + ",".join(f"t{n}" for n in range(5000))),
        get("limit given twice", "like={object}&limit=1&limit=2", ANSWERED),
        get("an unknown parameter", "like={object}&drop=table"),
        post(
            "a JSON body nested 10000 deep",
            b'{"like": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
            JSON,
        ),
        post("a JSON body that is an array", b"[1,2]", JSON),
        post("a JSON body in invalid UTF-8", b'{"query": "\xff"}', JSON),
        post(
            "an image search with an empty image",
            multipart(('Content-Disposition: form-data; name="image"; filename="q.png"', b"")),
            MULTIPART,
        ),
        post(
            "an image search with a bomb header",
            multipart(
                (
                    'Content-Disposition: form-data; name="image"; filename="q.png"',
                    png_claiming(100_000, 100_000),
                )
            ),
            MULTIPART,
        ),
        post(
            "an image search with HTML",
            multipart(
                ('Content-Disposition: form-data; name="image"; filename="q.png"', b"<html></html>")
            ),
            MULTIPART,
        ),
        post(
            "an image search without the image", multipart(text_part("owner", b"alice")), MULTIPART
        ),
        post("a plain-text body", b"query=cats", {"Content-Type": "text/plain"}),
    ]


ID_PATHS = [
    "/api/v1/objects/{}",
    "/api/v1/objects/{}/content",
    "/api/v1/objects/{}/thumbnail",
    "/api/v1/ingest/{}/status",
    "/api/v1/ingest/{}/timeline",
    "/api/v1/clusters/{}",
    "/api/v1/schemas/{}",
    "/api/v1/admin/dlq/{}",
]
BAD_IDS = [
    ("not a UUID", "not-a-uuid"),
    ("a NUL", "%00"),
    ("400 characters", "f" * 400),
    ("an encoded traversal", "%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
    ("a UUID in braces", "%7B00000000-0000-0000-0000-000000000000%7D"),
    ("SQL", "1'%20OR%20'1'%3D'1"),
]


def id_cases() -> list[Case]:
    out = [
        Case("ids", f"{path.format('…')} with {name}", "GET", path.format(value))
        for path in ID_PATHS
        for name, value in BAD_IDS
    ]
    nobody = "5f0c1e1e-9a6b-4c55-8b1d-3e2f7a9c0d11"
    out += [
        Case("ids", f"{path.format('…')} of nobody", "GET", path.format(nobody), status=404)
        for path in ID_PATHS
    ]
    out += [
        Case(
            "ids", "DELETE an object of nobody", "DELETE", f"/api/v1/objects/{nobody}", status=404
        ),
        Case("ids", "DELETE a job that is not a UUID", "DELETE", "/api/v1/ingest/../../x"),
        Case(
            "ids",
            "PATCH a cluster of nobody, as an owner",
            "PATCH",
            f"/api/v1/clusters/{nobody}",
            b'{"name": "x"}',
            JSON,
            status=403,
        ),
        Case(
            "ids",
            "migration number not a number",
            "POST",
            "/api/v1/schemas/{schema}/migrations/abc/approve",
        ),
        Case(
            "ids",
            "migration number beyond int64",
            "POST",
            "/api/v1/schemas/{schema}/migrations/99999999999999999999/approve",
        ),
        Case(
            "ids",
            "a document id that is not a UUID",
            "GET",
            "/api/v1/collections/abuse/documents/nope",
        ),
        Case("ids", "a collection name with a NUL", "GET", "/api/v1/collections/a%00b/documents"),
        Case("ids", "a UI page that climbs out", "GET", "/ui/..%2f..%2fpyproject.toml"),
        Case("ids", "an owner name with a NUL", "DELETE", "/api/v1/admin/owners/a%00b"),
        Case("ids", "an unknown model-switch action", "POST", "/api/v1/admin/model-switch/explode"),
    ]
    return out


def parameter_cases() -> list[Case]:
    queries = [
        ("/api/v1/clusters", "limit=-1"),
        ("/api/v1/clusters", "limit=0"),
        ("/api/v1/clusters", "limit=1000000000"),
        ("/api/v1/clusters", "offset=-5"),
        ("/api/v1/clusters", "limit=1.5"),
        ("/api/v1/clusters", "limit=0x10"),
        ("/api/v1/clusters", "limit="),
        ("/api/v1/clusters/{cluster}", "limit=-1"),
        ("/api/v1/admin/dlq", "limit=abc"),
        ("/api/v1/admin/dlq", "offset=99999999999999999999"),
        ("/api/v1/schemas", "limit=-1"),
        ("/api/v1/collections/abuse/documents", "limit=-1"),
        ("/api/v1/collections/abuse/documents", "where=1%3D1%3B%20DROP%20TABLE%20uploads"),
        ("/api/v1/clusters/proposals", "limit=99999999999999999999"),
    ]
    out = [Case("parameters", f"{p} ?{q}", "GET", f"{p}?{q}") for p, q in queries]
    # A parameter no route reads is ignored, as HTTP APIs do.
    path = "/api/v1/collections/abuse/documents?a.b.c.d.e.f=1"
    return [*out, Case("parameters", "an unknown parameter", "GET", path, expect=ANSWERED)]


def method_cases() -> list[Case]:
    pairs = [
        ("PUT", "/api/v1/ingest"),
        ("PATCH", "/api/v1/ingest"),
        ("DELETE", "/api/v1/search"),
        ("PUT", "/api/v1/objects/{object}"),
        ("POST", "/api/v1/objects/{object}/content"),
        ("DELETE", "/api/v1/clusters"),
        ("PUT", "/api/v1/schemas/{schema}"),
        ("POST", "/api/v1/admin/retention"),
        ("TRACE", "/api/v1/ingest"),
        ("PUT", "/health"),
        ("POST", "/metrics"),
    ]
    out = [Case("methods", f"{m} {p}", m, p, status=405) for m, p in pairs]
    # A method no standard defines: refused by the HTTP parser, as a JSON 400.
    return [*out, Case("methods", "FOO /api/v1/search", "FOO", "/api/v1/search")]


def auth_cases() -> list[Case]:
    def who(
        name: str,
        headers: dict[str, str],
        status: int,
        method: str = "GET",
        path: str = "/api/v1/clusters",
        body: bytes | None = None,
    ) -> Case:
        return Case("auth", name, method, path, body, headers, status=status, key=None)

    image = multipart(file_part("x.png", png()))
    return [
        who("no key", {}, 401),
        who("a wrong key", {"X-API-Key": "wrong-key-0123456789"}, 401),
        who("a Bearer of 10 kB", {"Authorization": "Bearer " + "k" * 10_000}, 401),
        who("Basic credentials", {"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
        who("an empty Bearer", {"Authorization": "Bearer "}, 401),
        who(
            "a read key uploading",
            {**MULTIPART, "X-API-Key": READER},
            403,
            "POST",
            "/api/v1/ingest",
            image,
        ),
        who(
            "a read key on an admin route",
            {"X-API-Key": READER},
            403,
            "GET",
            "/api/v1/admin/dlq",
        ),
        who(
            "an owner's key uploading for another owner",
            {**MULTIPART, "X-API-Key": ALICE},
            403,
            "POST",
            "/api/v1/ingest",
            multipart(file_part("x.png", png()), text_part("owner", b"bob")),
        ),
    ]


def raw_cases() -> list[RawCase]:
    host = b"Host: 127.0.0.1\r\n"
    post = b"POST /api/v1/ingest HTTP/1.1\r\n" + host
    cases = [
        ("a garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        ("HTTP/0.9 to a keyed route", b"GET /api/v1/clusters\r\n\r\n"),
        ("HTTP/3.0", b"GET /health HTTP/3.0\r\n" + host + b"\r\n"),
        ("no version", b"GET /health\r\n" + host + b"\r\n"),
        (
            "a 100 kB header",
            b"GET /health HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        ),
        (
            "500 headers",
            b"GET /health HTTP/1.1\r\n"
            + host
            + b"".join(b"X-%d: v\r\n" % n for n in range(500))
            + b"\r\n",
        ),
        ("a header name with a space", b"GET /health HTTP/1.1\r\n" + host + b"Bad Name: v\r\n\r\n"),
        ("a NUL in a header value", b"GET /health HTTP/1.1\r\n" + host + b"X-A: a\x00b\r\n\r\n"),
        (
            "an API key with a NUL",
            b"GET /api/v1/clusters HTTP/1.1\r\n"
            + host
            + b"X-API-Key: "
            + ALICE.encode()
            + b"\x00\r\n\r\n",
        ),
        ("an obs-folded header", b"GET /health HTTP/1.1\r\n" + host + b"X-A: a\r\n b\r\n\r\n"),
        ("Content-Length: abc", post + b"Content-Length: abc\r\n\r\n"),
        ("Content-Length: -1", post + b"Content-Length: -1\r\n\r\n"),
        ("two Content-Lengths", post + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        (
            "Content-Length and chunked (smuggling)",
            post
            + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
        ),
        ("an unknown transfer coding", post + b"Transfer-Encoding: gzip, identity\r\n\r\nxx"),
        (
            "a chunk size that is not hex",
            post
            + b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a chunk size beyond 64 bits",
            post
            + b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nfffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        ),
        (
            "a body shorter than its length, then close",
            post + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a"',
        ),
        (
            "an absolute-form URI to another host",
            b"GET http://evil.example/health HTTP/1.1\r\n" + host + b"\r\n",
        ),
        ("a path without its slash", b"GET health HTTP/1.1\r\n" + host + b"\r\n"),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n" + host + b"\r\n"),
        (
            "a 64 kB URL",
            b"GET /api/v1/search?query=" + b"a" * 65_536 + b" HTTP/1.1\r\n" + host + b"\r\n",
        ),
        ("a raw NUL in the path", b"GET /api/v1/\x00objects HTTP/1.1\r\n" + host + b"\r\n"),
        (
            "a 10 GB upload announced",
            post
            + b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 10737418240\r\n\r\n--x\r\n",
        ),
    ]
    return [RawCase("low-level HTTP", n, d) for n, d in cases]


ALICE = "abuse-alice-key-0123456789"
BOB = "abuse-bob-key-0123456789ab"
READER = "abuse-reader-key-012345678"
ADMIN = "abuse-admin-key-0123456789"
API_KEYS = f"{ALICE}:admin:alice,{BOB}:admin:bob,{READER}:read"


def corpus() -> list[Case]:
    return [
        *image_cases(),
        *filename_cases(),
        *multipart_cases(),
        *json_cases(),
        *search_cases(),
        *id_cases(),
        *parameter_cases(),
        *method_cases(),
        *auth_cases(),
    ]
