"""A document as a row of its collection's table, and what did not fit.

Pure. Each value that fits its column's type goes there, converted (timestamps parsed, large
integers as Decimal); a value that does not fit, and every key the table has no column for,
goes to the row's `_overflow` (a partial document of the same shape), so nothing is lost. What
did not fit is also reported, for the migration the collection proposes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from common import jsontext
from schemer.decide import Column
from schemer.infer import INT64, Path, flatten, kind_of, parse_date, parse_timestamp


class Misfit(Exception):
    """A value that its column's type cannot hold."""


def _scalar(value: Any, sql_type: str) -> Any:
    if sql_type == "text":
        if isinstance(value, str):
            return value
    elif sql_type == "boolean":
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass  # never a number
    elif sql_type == "bigint":
        if isinstance(value, int) and INT64[0] <= value <= INT64[1]:
            return value
    elif sql_type == "double precision":
        if isinstance(value, int | float):
            try:
                number = float(value)
            except OverflowError:
                raise Misfit(sql_type) from None
            if math.isfinite(number) and (not isinstance(value, int) or abs(value) < 2**53):
                return number
    elif sql_type == "numeric":
        if isinstance(value, int | float):
            return Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    elif sql_type == "timestamptz":
        if isinstance(value, str):
            stamp = parse_timestamp(value)
            if stamp is None and (day := parse_date(value)) is not None:
                stamp = parse_timestamp(f"{day.isoformat()}T00:00:00Z")
            if stamp is not None:
                return stamp
    elif sql_type == "date":
        if isinstance(value, str) and (day := parse_date(value)) is not None:
            return day
    raise Misfit(sql_type)


def convert(value: Any, sql_type: str) -> Any:
    """The value as its column's parameter (arrays and jsonb as JSON text), or Misfit."""
    if value is None:
        return None
    if sql_type == "jsonb":
        return jsontext.dumps(value).decode()
    if sql_type.endswith("[]"):
        if not isinstance(value, list):
            raise Misfit(sql_type)
        element = sql_type[:-2]
        for item in value:
            if item is not None:
                _scalar(item, element)
        return jsontext.dumps(value).decode()
    return _scalar(value, sql_type)


def transport_type(sql_type: str) -> str:
    """The parameter array's element type that carries a column's values in one insert."""
    return "text" if sql_type == "jsonb" or sql_type.endswith("[]") else sql_type


@dataclass(frozen=True)
class Row:
    values: list[Any]  # one per column, in the columns' order
    overflow: dict[str, Any] | None
    misfits: list[tuple[Path, str]]  # (path, kind of the value) that had no place


def to_row(document: dict[str, Any], columns: list[Column], max_depth: int) -> Row:
    leaves = dict(flatten(document, max_depth).leaves)
    values = []
    misfits: list[tuple[Path, str]] = []
    for column in columns:
        value = leaves.pop(column.path, None)
        try:
            values.append(convert(value, column.type))
        except Misfit:
            values.append(None)
            leaves[column.path] = value
            misfits.append((column.path, kind_of(value)))
    known = {c.path for c in columns}
    misfits.extend((path, kind_of(value)) for path, value in leaves.items() if path not in known)
    return Row(values, nest(leaves) if leaves else None, misfits)


def nest(leaves: dict[Path, Any]) -> dict[str, Any]:
    """A partial document from leaves (the inverse of flatten for what it holds)."""
    document: dict[str, Any] = {}
    for path, value in leaves.items():
        target = document
        for key in path[:-1]:
            child = target.get(key)
            if not isinstance(child, dict):
                child = target[key] = {}
            target = child
        target[path[-1]] = value
    return document
