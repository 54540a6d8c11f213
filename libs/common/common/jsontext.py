"""JSON text to values and back without losing integers.

orjson is fast and strict, but it reads an integer beyond 64 bits as a float (silently
rounded) and will not write one. Documents are stored as they came, so for text holding a
long run of digits the values are read again with the standard library, which keeps every
integer exact; orjson stays the parser of everything else (and the judge of validity).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import orjson

# 19 digits or more: the shortest integers that may not fit 64 bits (inside strings too:
# a false alarm only costs a second, exact parse).
_LONG_DIGITS = re.compile(rb"\d{19,}")


def loads(data: bytes | str) -> Any:
    """Parse JSON (raises orjson.JSONDecodeError), integers kept exact."""
    value = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else data
    if _LONG_DIGITS.search(raw):
        return json.loads(raw)
    return value


def path_key(keys: Sequence[str]) -> str:
    """A document's key path as one readable string (`address.city`; a dot or a backslash in
    a key is escaped): how the schemer names fields and the gateway's filters name them."""
    return ".".join(k.replace("\\", "\\\\").replace(".", "\\.") for k in keys)


def dumps(value: Any) -> bytes:
    """Compact JSON text; integers beyond 64 bits written exactly."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
