"""Readable names for collections nobody named. Pure."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable

_NOT_NAME = re.compile(r"[^a-z0-9]+")
MAX_LENGTH = 40


def _ascii(key: str) -> str:
    text = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode().lower()
    return _NOT_NAME.sub("_", text).strip("_")


def generated_name(top_level_keys: Iterable[str], taken: Collection[str]) -> str:
    """A collection name from the documents' first top-level keys (`id_name_email`), made
    unique among `taken` with `_2`, `_3`, ...; `documents` when no key gives a name."""
    parts: list[str] = []
    for key in top_level_keys:
        part = _ascii(key)
        if part and part not in parts:
            parts.append(part)
        if len(parts) == 3:
            break
    base = "_".join(parts)[:MAX_LENGTH].strip("_") or "documents"
    if not base[0].isalpha():
        base = f"c_{base}"[:MAX_LENGTH]
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name
