"""SQL identifiers derived from user keys, through this one function.

Keys come from documents: anything at all. A column or table name is the key normalised
(NFKC, lower case, every run of characters other than letters, digits and `_` made one `_`),
never empty and never starting with a digit, at most 63 bytes (PostgreSQL's limit) with a
stable suffix (a hash of the original key) when it had to be cut or when it would collide with
a name already taken (keys that differ only by case or punctuation). Reserved words are fine:
the server quotes every identifier (`quote_ident`, see common.db.quoted) before it reaches SQL.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Collection

MAX_BYTES = 63
_SUFFIX_BYTES = 9  # "_" and 8 hex digits
_NOT_WORD = re.compile(r"[^\w]+")
# The columns every collection table has; a user key never takes one of these names.
SYSTEM_COLUMNS = frozenset({"_id", "_upload_id", "_overflow", "_created_at", "document"})


def _truncate(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, cut on a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


def normalise(raw: str) -> str:
    """The readable part of a name for `raw` (not yet unique, not yet cut to length)."""
    text = unicodedata.normalize("NFKC", raw).lower()
    text = _NOT_WORD.sub("_", text).strip("_")
    if not text:
        text = "key"
    if text[0].isdigit():
        text = f"k_{text}"
    return text


def stable_suffix(raw: str) -> str:
    return "_" + hashlib.sha256(raw.encode(errors="surrogatepass")).hexdigest()[:8]


def identifier(raw: str, taken: Collection[str] = ()) -> str:
    """The identifier for `raw`, not in `taken`: normalised, cut to 63 bytes, suffixed when
    cut or when its plain form is taken. The same `raw` and `taken` give the same name."""
    return _unique(normalise(raw), raw, taken)


def column_names(paths: list[tuple[str, ...]], taken: Collection[str] = ()) -> list[str]:
    """A column name per key path (`parent__child` for nested keys), unique among themselves,
    the system columns and `taken`, in the order given (so earlier paths keep plain names)."""
    used = set(SYSTEM_COLUMNS) | set(taken)
    names = []
    for path in paths:
        # The suffix hashes the keys themselves, joined by a character no name keeps.
        name = _unique("__".join(normalise(key) for key in path), "\x1f".join(path), used)
        used.add(name)
        names.append(name)
    return names


def _unique(readable: str, raw: str, taken: Collection[str]) -> str:
    if len(readable.encode()) <= MAX_BYTES and readable not in taken:
        return readable
    name = _truncate(readable, MAX_BYTES - _SUFFIX_BYTES) + stable_suffix(raw)
    attempt = 1
    while name in taken:  # two keys whose hashes share 8 digits: vanishingly rare
        attempt += 1
        name = _truncate(readable, MAX_BYTES - _SUFFIX_BYTES) + stable_suffix(f"{raw}#{attempt}")
    return name
