"""What an approved table should become when documents stop fitting it.

Pure. A key the table has no column for gets a column (its type from what was seen); a value
too wide for its column widens the column where no value is lost (integers to numeric, dates
to timestamps); anything else (a string where numbers were) stays in `_overflow`, said so.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from schemer.decide import MAX_COLUMNS, Column, scalar_type
from schemer.identifiers import column_names
from schemer.infer import (
    ARRAY,
    BIGNUM,
    DATE,
    INTEGER,
    NUMBER,
    OBJECT,
    OBJECTS,
    TIMESTAMP,
    Path,
    path_key,
)

# The types a column may widen to without losing a value it holds.
WIDENS = {
    "bigint": {"numeric"},
    "double precision": {"numeric"},
    "date": {"timestamptz"},
}


@dataclass(frozen=True)
class Change:
    path: Path
    column: str
    type: str
    action: str  # add | widen
    previous: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": list(self.path),
            "column": self.column,
            "type": self.type,
            "action": self.action,
            "from": self.previous,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(tuple(data["path"]), data["column"], data["type"], data["action"], data["from"])


def _new_column_type(kinds: set[str]) -> str:
    if kinds & {ARRAY, OBJECTS, OBJECT}:
        return "jsonb"
    return scalar_type(kinds) or "jsonb"


def _widened(current: str, kinds: set[str]) -> str | None:
    if current == "bigint" and kinds & {NUMBER, BIGNUM}:
        return "numeric"
    if current == "double precision" and kinds & {INTEGER, NUMBER, BIGNUM}:
        return "numeric"  # integers beyond 2**53, which a double would round
    if current == "date" and TIMESTAMP in kinds and kinds <= {TIMESTAMP, DATE}:
        return "timestamptz"
    return None


def propose(
    columns: list[Column], misfits: list[tuple[Path, str]], pending: list[Change]
) -> list[Change]:
    """The changes (with those already pending) that would let these misfits into columns."""
    kinds: dict[Path, set[str]] = defaultdict(set)
    for path, kind in misfits:
        if kind != "null":
            kinds[path].add(kind)
    by_path = {c.path: c for c in columns}
    changes = {c.path: c for c in pending}
    # A table stays one people can query: keys beyond MAX_COLUMNS stay in _overflow.
    room = MAX_COLUMNS - len(columns) - sum(c.action == "add" for c in changes.values())
    new_paths = [p for p in kinds if p not in by_path and p not in changes][: max(0, room)]
    taken = [c.name for c in columns] + [c.column for c in pending]
    for path, name in zip(new_paths, column_names(new_paths, taken), strict=True):
        changes[path] = Change(path, name, _new_column_type(kinds[path]), "add")
    for path, seen in kinds.items():
        column = by_path.get(path)
        if column is None or path in changes:
            continue
        wider = _widened(column.type, seen)
        if wider is not None and wider in WIDENS.get(column.type, ()):
            changes[path] = Change(path, column.name, wider, "widen", column.type)
    return list(changes.values())


def describe(change: Change) -> str:
    if change.action == "add":
        return f"add column {change.column} {change.type} for {path_key(change.path)!r}"
    return f"widen {change.column} from {change.previous} to {change.type}"


def apply(columns: list[Column], changes: list[Change]) -> list[Column]:
    """The columns once the changes are made."""
    result = {c.path: c for c in columns}
    for change in changes:
        result[change.path] = Column(change.path, change.column, change.type)
    return list(result.values())
