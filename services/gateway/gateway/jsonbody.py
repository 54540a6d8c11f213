"""JSON from clients, parsed one way for every body, form field and file: within
MAX_JSON_DEPTH, and without NUL characters (PostgreSQL's text and jsonb cannot hold one).

Both checks read the bytes, before or beside the parse, so a large document costs a few
passes in C rather than a walk over every value in Python, and a hostile one builds nothing.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from common import jsontext
from gateway.deps import DEPS
from gateway.errors import ApiError

_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'"[]{}'))
_CHUNK = 1 << 20
_NUL_ESCAPE = re.compile(rb"(\\+)u0000")


def parse_json(data: bytes, what: str, max_depth: int) -> Any:
    """Parse JSON or raise a 400: naming the position of the first error, the depth limit,
    or where a NUL character is."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if nested_deeper_than(data, max_depth):
        raise ApiError(
            400, f"{what} is nested more than {max_depth} levels deep", {"limit": max_depth}
        )
    try:
        value = jsontext.loads(data)  # integers beyond 64 bits kept exact
    except orjson.JSONDecodeError as error:
        raise ApiError(
            400,
            f"invalid JSON in {what}: {error.msg} at line {error.lineno} column {error.colno}",
            {"line": error.lineno, "column": error.colno, "position": error.pos},
        ) from None
    position = nul_escape_at(data)
    if position is not None:
        raise ApiError(
            400,
            f"{what} contains a NUL character (\\u0000), which cannot be stored",
            {"position": position},
        )
    return value


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body: 413 over `max_bytes`, 400 when it is not JSON we can take."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "the request body is too large")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ApiError(413, "the request body is too large")
    return parse_json(raw, "JSON body", request.app[DEPS].settings.max_json_depth)


def nested_deeper_than(data: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` deep (brackets inside
    strings do not count). Exact for valid JSON; for invalid JSON the parser says what's wrong."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Every backslash in JSON starts an escape: drop the escaped backslashes, then the escaped
    # quotes, and the quotes left delimit strings. Keep only quotes and brackets, { } as [ ].
    skeleton = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_BRACKETS, _NOT_STRUCTURE)
    quotes = depth = 0
    for start in range(0, len(skeleton), _CHUNK):
        chunk = np.frombuffer(skeleton, np.uint8, min(_CHUNK, len(skeleton) - start), start)
        is_quote = chunk == ord('"')
        in_string = (np.cumsum(is_quote, dtype=np.int64) + quotes) % 2 == 1
        step = (chunk == ord("[")).astype(np.int32) - (chunk == ord("]"))
        step[in_string] = 0
        levels = np.cumsum(step, dtype=np.int64) + depth
        if levels.max() > limit:
            return True
        quotes += int(is_quote.sum())
        depth = int(levels[-1])
    return False


def nul_escape_at(data: bytes) -> int | None:
    """The byte position of the first escaped NUL (`\\u0000`) in JSON text, if any; an escaped
    backslash followed by `u0000` is text, not a NUL."""
    if b"u0000" not in data:
        return None
    for match in _NUL_ESCAPE.finditer(data):
        backslashes = match.group(1)
        if len(backslashes) % 2 == 1:
            return match.end(1) - 1
    return None
