"""What documents look like: key paths, the kinds of value at each, and how often.

Pure: documents in, statistics out. Statistics merge (a collection's are the sum of its
batches'), survive a round trip through JSON (they are stored with the collection), and are
computed without recursion (a document may nest as deep as the gateway lets it).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from common.jsontext import path_key as path_key  # how fields are named, shared

Path = tuple[str, ...]

# Kinds of value, as inference sees them.
NULL = "null"
BOOLEAN = "boolean"
INTEGER = "integer"  # fits 64 bits
BIGNUM = "bignum"  # an integer beyond 64 bits
NUMBER = "number"  # a float
TIMESTAMP = "timestamp"  # an ISO-8601 date and time
DATE = "date"  # an ISO-8601 date
STRING = "string"
ARRAY = "array"  # of scalars (element kinds counted apart)
OBJECTS = "objects"  # an array holding objects or arrays
OBJECT = "object"  # an object kept whole: deeper than the depth limit, or empty

INT64 = (-(2**63), 2**63 - 1)
# Distinct values tracked per path (as short hashes): cardinality is exact up to this.
DISTINCT_CAP = 64
# Paths tracked per collection: a document with more is too wide for a table anyway.
MAX_PATHS = 2000
# A path is part of a collection's shape when this share of its documents has it.
CORE_PRESENCE = 0.5

_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_timestamp(text: str) -> datetime | None:
    """An ISO-8601 date and time (naive ones are taken as UTC), or None."""
    if len(text) > 40 or not _TIMESTAMP.match(text):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_date(text: str) -> date | None:
    if len(text) != 10 or not _DATE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def kind_of(value: Any) -> str:
    """The kind of one value (a list's elements are looked at, not its nesting)."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER if INT64[0] <= value <= INT64[1] else BIGNUM
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, str):
        if parse_timestamp(value) is not None:
            return TIMESTAMP
        if parse_date(value) is not None:
            return DATE
        return STRING
    if isinstance(value, list):
        return OBJECTS if any(isinstance(v, dict | list) for v in value) else ARRAY
    return OBJECT


def parse_path_key(text: str) -> Path:
    """The inverse of path_key."""
    keys, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ".":
            keys.append("".join(current))
            current = []
        else:
            current.append(ch)
    keys.append("".join(current))
    return tuple(keys)


@dataclass(frozen=True)
class Flat:
    """A document as leaves: key path -> value, and how deep its objects nest."""

    leaves: dict[Path, Any]
    depth: int


def flatten(document: dict[str, Any], max_depth: int) -> Flat:
    """Leaves of a document in its own key order, objects opened up to `max_depth` levels
    (deeper ones and empty ones are leaves themselves); lists are leaves. Iterative: any
    nesting is safe."""
    leaves: dict[Path, Any] = {}
    depth = 1 if document else 0
    stack: list[tuple[Path, Iterator[tuple[str, Any]]]] = [((), iter(document.items()))]
    while stack:
        prefix, items = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        key, value = entry
        path = (*prefix, key)
        level = len(path)
        if isinstance(value, dict) and value and level < max_depth:
            depth = max(depth, level + 1)
            stack.append((path, iter(value.items())))
            continue
        if isinstance(value, dict) and value:
            depth = max(depth, level + _nesting(value))
        leaves[path] = value
    return Flat(leaves, depth)


def _nesting(value: dict[str, Any]) -> int:
    """How many levels of objects `value` holds (iteratively)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        obj, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((v, level + 1) for v in obj.values() if isinstance(v, dict) and v)
    return deepest


def _digest(value: Any) -> str:
    return hashlib.blake2b(repr(value).encode(errors="replace"), digest_size=6).hexdigest()


@dataclass
class PathStats:
    """What was seen at one key path."""

    path: Path
    present: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    elements: Counter[str] = field(default_factory=Counter)  # kinds inside arrays
    max_length: int = 0  # characters of a string, elements of an array
    distinct: set[str] = field(default_factory=set)
    distinct_capped: bool = False

    def observe(self, value: Any) -> None:
        self.present += 1
        kind = kind_of(value)
        self.kinds[kind] += 1
        if isinstance(value, str | list):
            self.max_length = max(self.max_length, len(value))
        if kind == ARRAY:
            self.elements.update(kind_of(v) for v in value)
        if not self.distinct_capped and kind not in (OBJECTS, OBJECT, ARRAY):
            self.distinct.add(_digest(value))
            if len(self.distinct) > DISTINCT_CAP:
                self.distinct_capped = True
                self.distinct.clear()

    def merge(self, other: PathStats) -> None:
        self.present += other.present
        self.kinds.update(other.kinds)
        self.elements.update(other.elements)
        self.max_length = max(self.max_length, other.max_length)
        if self.distinct_capped or other.distinct_capped:
            self.distinct_capped, self.distinct = True, set()
        else:
            self.distinct |= other.distinct
            if len(self.distinct) > DISTINCT_CAP:
                self.distinct_capped, self.distinct = True, set()

    @property
    def cardinality(self) -> int | None:
        """Distinct values seen (None: more than DISTINCT_CAP)."""
        return None if self.distinct_capped else len(self.distinct)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": list(self.path),
            "present": self.present,
            "kinds": dict(self.kinds),
            "elements": dict(self.elements),
            "max_length": self.max_length,
            "distinct": sorted(self.distinct),
            "distinct_capped": self.distinct_capped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PathStats:
        return cls(
            tuple(data["path"]),
            data["present"],
            Counter(data["kinds"]),
            Counter(data["elements"]),
            data["max_length"],
            set(data["distinct"]),
            data["distinct_capped"],
        )


@dataclass
class Stats:
    """A collection's (or a batch's) statistics."""

    documents: int = 0  # every document counted
    sampled: int = 0  # the documents whose values were looked at
    paths: dict[Path, PathStats] = field(default_factory=dict)
    max_depth: int = 0
    truncated: bool = False  # more than MAX_PATHS paths: the rest were not tracked

    def observe(self, flat: Flat) -> None:
        self.sampled += 1
        self.max_depth = max(self.max_depth, flat.depth)
        for path, value in flat.leaves.items():
            stats = self.paths.get(path)
            if stats is None:
                if len(self.paths) >= MAX_PATHS:
                    self.truncated = True
                    continue
                stats = self.paths[path] = PathStats(path)
            stats.observe(value)

    def merge(self, other: Stats) -> None:
        self.documents += other.documents
        self.sampled += other.sampled
        self.max_depth = max(self.max_depth, other.max_depth)
        self.truncated = self.truncated or other.truncated
        for path, stats in other.paths.items():
            mine = self.paths.get(path)
            if mine is not None:
                mine.merge(stats)
            elif len(self.paths) < MAX_PATHS:
                self.paths[path] = PathStats.from_json(stats.to_json())
            else:
                self.truncated = True

    def presence(self, path: Path) -> float:
        return self.paths[path].present / self.sampled if self.sampled else 0.0

    def core_paths(self) -> set[str]:
        """The paths that make the shape: those in at least half the documents."""
        core = {path_key(p) for p in self.paths if self.presence(p) >= CORE_PRESENCE}
        return core or {path_key(p) for p in self.paths}

    @property
    def top_level_keys(self) -> int:
        return len({p[0] for p in self.paths})

    def to_json(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "sampled": self.sampled,
            "max_depth": self.max_depth,
            "truncated": self.truncated,
            "paths": [s.to_json() for s in self.paths.values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        paths = [PathStats.from_json(p) for p in data.get("paths", [])]
        return cls(
            data.get("documents", 0),
            data.get("sampled", 0),
            {p.path: p for p in paths},
            data.get("max_depth", 0),
            data.get("truncated", False),
        )


def observe(documents: list[dict[str, Any]], max_depth: int, sample_size: int) -> Stats:
    """Statistics of a batch: every document counted, at most `sample_size` of them (evenly
    spread) looked at."""
    stats = Stats(documents=len(documents))
    step = max(1, -(-len(documents) // sample_size))
    for document in documents[::step][:sample_size]:
        stats.observe(flatten(document, max_depth))
    return stats


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
