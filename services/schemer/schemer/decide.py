"""SQL table or JSONB collection: the rules, their reasons in plain words, and the columns.

Pure. A table is chosen for documents that are stable (keys present in most documents),
shallow (nested no deeper than SCHEMA_MAX_DEPTH, flattened into `parent__child` columns),
narrow (at most SCHEMA_MAX_TOP_LEVEL_KEYS top-level keys) and consistently typed (integers
widen to floats, and beyond 64 bits to numeric; ISO-8601 strings are timestamps or dates;
nulls are not a type). Anything else is a JSONB collection with a GIN index.

An array of objects (order line items, say) stays a `jsonb` column of the document's row
rather than a child table: it is read with its document and keeps its order, an insert stays
one row per document, and `@>` still finds rows by what is inside it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from schemer.identifiers import column_names
from schemer.infer import (
    ARRAY,
    BIGNUM,
    BOOLEAN,
    DATE,
    INTEGER,
    NULL,
    NUMBER,
    OBJECT,
    OBJECTS,
    STRING,
    TIMESTAMP,
    Path,
    PathStats,
    Stats,
    path_key,
)

Storage = Literal["table", "jsonb"]

# Every type a column can have: nothing else reaches DDL.
SCALAR_TYPES = ("bigint", "double precision", "numeric", "boolean", "text", "timestamptz", "date")
SQL_TYPES = frozenset(
    {*SCALAR_TYPES, "jsonb", *(f"{t}[]" for t in SCALAR_TYPES if t not in ("timestamptz", "date"))}
)
# PostgreSQL allows 1,600 columns; a table of more than this many is not one people query.
MAX_COLUMNS = 400
# Fewer documents than this: the proposal says its confidence is low.
FEW_DOCUMENTS = 5


@dataclass(frozen=True)
class Rules:
    """The thresholds, from the schemer's settings."""

    stability_threshold: float
    max_top_level_keys: int
    max_depth: int


@dataclass(frozen=True)
class Column:
    path: Path
    name: str
    type: str

    def to_json(self) -> dict[str, Any]:
        return {"path": list(self.path), "column": self.name, "type": self.type}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Column:
        return cls(tuple(data["path"]), data["column"], data["type"])


@dataclass(frozen=True)
class Decision:
    storage: Storage
    reasons: list[str]
    confidence: float
    confidence_words: str
    columns: list[Column]
    # Paths whose values have more than one type (the reason a table was refused, if so).
    inconsistent: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "storage": self.storage,
            "reasons": self.reasons,
            "confidence": round(self.confidence, 2),
            "confidence_words": self.confidence_words,
            "inconsistent": self.inconsistent,
        }


def scalar_type(kinds: set[str]) -> str | None:
    """The column type of scalar values of these kinds (nulls left out), or None when they
    do not share one."""
    kinds = kinds - {NULL}
    if not kinds:
        return "text"  # nothing but nulls so far
    if kinds == {BOOLEAN}:
        return "boolean"
    if kinds <= {INTEGER, NUMBER, BIGNUM}:
        if BIGNUM in kinds:
            return "numeric"
        return "bigint" if kinds == {INTEGER} else "double precision"
    if kinds <= {TIMESTAMP, DATE}:
        return "date" if kinds == {DATE} else "timestamptz"
    if kinds <= {STRING, TIMESTAMP, DATE}:
        return "text"  # strings, some of which look like dates
    return None


def column_type(stats: PathStats) -> tuple[str, bool]:
    """(type, consistent) of one path's column."""
    kinds = set(stats.kinds) - {NULL}
    if kinds <= {OBJECTS, ARRAY} and OBJECTS in kinds:
        return "jsonb", True  # arrays of objects: see the module's note
    if kinds == {OBJECT}:
        return "jsonb", True
    if kinds == {ARRAY}:
        element = scalar_type(set(stats.elements))
        if element in ("timestamptz", "date"):
            element = "text"  # kept as written
        return (f"{element}[]", True) if element is not None else ("jsonb", True)
    if kinds & {ARRAY, OBJECTS, OBJECT}:
        return "jsonb", False  # sometimes a list or an object, sometimes a scalar
    scalar = scalar_type(kinds)
    return (scalar, True) if scalar is not None else ("jsonb", False)


def plan_columns(stats: Stats, taken: Collection[str] = ()) -> list[Column]:
    """A column per path, in the order the paths were first seen."""
    paths = list(stats.paths.values())
    names = column_names([p.path for p in paths], taken)
    return [Column(p.path, n, column_type(p)[0]) for p, n in zip(paths, names, strict=True)]


def fields(stats: Stats) -> list[dict[str, Any]]:
    """Per key path what was seen, for people (the API shows it with the decision)."""
    summary = []
    for p in stats.paths.values():
        sql_type, consistent = column_type(p)
        summary.append(
            {
                "path": path_key(p.path),
                "keys": list(p.path),
                "presence": round(stats.presence(p.path), 4),
                "kinds": dict(p.kinds),
                "element_kinds": dict(p.elements),
                "type": sql_type,
                "consistent": consistent,
                "cardinality": p.cardinality,
                "max_length": p.max_length,
            }
        )
    return summary


def _describe_kinds(stats: PathStats) -> str:
    kinds = {k: n for k, n in stats.kinds.items() if k != NULL}
    return " and ".join(f"{_KIND_WORDS.get(k, k)} in {n}" for k, n in sorted(kinds.items()))


_KIND_WORDS = {
    BOOLEAN: "a boolean",
    INTEGER: "an integer",
    BIGNUM: "a large integer",
    NUMBER: "a number",
    TIMESTAMP: "a timestamp",
    DATE: "a date",
    STRING: "a string",
    ARRAY: "a list",
    OBJECTS: "a list of objects",
    OBJECT: "an object",
}


def decide(stats: Stats, rules: Rules) -> Decision:
    """The storage for documents with these statistics, and why."""
    against: list[str] = []
    for_table: list[str] = []
    paths = list(stats.paths.values())
    inconsistent = [p for p in paths if not column_type(p)[1]]

    if stats.truncated or len(paths) > MAX_COLUMNS:
        against.append(
            f"the documents hold more than {MAX_COLUMNS} distinct keys: too wide for a table"
        )
    top = stats.top_level_keys
    if top > rules.max_top_level_keys:
        against.append(
            f"{top} top-level keys; a table takes at most {rules.max_top_level_keys}"
            " (SCHEMA_MAX_TOP_LEVEL_KEYS)"
        )
    if stats.max_depth > rules.max_depth:
        against.append(
            f"objects nest {stats.max_depth} levels deep; a table flattens at most"
            f" {rules.max_depth} (SCHEMA_MAX_DEPTH)"
        )
    stability = sum(stats.presence(p.path) for p in paths) / len(paths) if paths else 1.0
    rare = sorted(paths, key=lambda p: p.present)[:3]
    if stability < rules.stability_threshold:
        against.append(
            f"keys come and go: on average a key is in {stability:.0%} of the documents"
            f" (a table needs {rules.stability_threshold:.0%}, SCHEMA_STABILITY_THRESHOLD);"
            " rarest: "
            + ", ".join(f"{path_key(p.path)!r} ({stats.presence(p.path):.0%})" for p in rare)
        )
    if inconsistent:
        against.append(
            "types change: "
            + "; ".join(f"{path_key(p.path)!r} is {_describe_kinds(p)}" for p in inconsistent[:3])
            + (f" (and {len(inconsistent) - 3} more keys)" if len(inconsistent) > 3 else "")
        )

    if not against:
        storage: Storage = "table"
        if stability >= 0.999:
            for_table.append(f"every document has the same {len(paths)} key paths")
        else:
            for_table.append(f"stable: on average a key is in {stability:.0%} of the documents")
        for_table.append("each key holds one type (integers widen to numbers where they mix)")
        nested = [p for p in paths if len(p.path) > 1]
        if nested:
            for_table.append(
                f"nested objects (at most {stats.max_depth} levels) flatten into"
                " parent__child columns"
            )
        arrays = [p for p in paths if OBJECTS in p.kinds]
        if arrays:
            for_table.append(
                ", ".join(repr(path_key(p.path)) for p in arrays)
                + " holds lists of objects: kept as a jsonb column of the row (read with its"
                " document, in its order; no child table to join)"
            )
        reasons = for_table
    else:
        storage = "jsonb"
        reasons = [*against, "so: a JSONB collection with a GIN index"]
    score, words = _confidence(stats, rules, storage, stability, len(against))
    columns = plan_columns(stats) if storage == "table" else []
    return Decision(
        storage,
        reasons,
        score,
        words,
        columns,
        [path_key(p.path) for p in inconsistent],
    )


def _confidence(
    stats: Stats, rules: Rules, storage: Storage, stability: float, reasons_against: int
) -> tuple[float, str]:
    n = stats.sampled
    if n < FEW_DOCUMENTS:
        return 0.3, f"low: only {n} document{'s' if n != 1 else ''} seen so far"
    margin = abs(stability - rules.stability_threshold)
    if storage == "table":
        if margin < 0.1 and stability < 0.999:
            return 0.6, (
                f"medium: {n} documents, but stability ({stability:.0%}) is close to the"
                f" threshold ({rules.stability_threshold:.0%})"
            )
        return min(0.99, 0.8 + n / 1000), f"high: {n} documents, all of one shape"
    if reasons_against > 1 or margin >= 0.1 or stability >= rules.stability_threshold:
        return min(
            0.99, 0.8 + n / 1000
        ), f"high: {n} documents, {reasons_against} reason(s) against a table"
    return 0.6, (
        f"medium: {n} documents; stability ({stability:.0%}) is close to the threshold"
        f" ({rules.stability_threshold:.0%})"
    )
