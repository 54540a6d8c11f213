"""`where` filters of GET /api/v1/collections/{name}/documents, checked against the
collection's known fields: `where=age>=30`, `where=address.city=Oslo` (repeatable, all must
hold). Pure: a filter is parsed and its value typed here; repo/collections.py compiles it to
parameterised SQL against the table's column or the JSONB document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.errors import ApiError

OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
_WHERE = re.compile(r"^(?P<path>.+?)(?P<op><=|>=|!=|=|<|>)(?P<value>.*)$", re.S)
MAX_FILTERS = 10
_INTEGER = re.compile(r"^-?\d{1,20}$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
INT64 = (-(2**63), 2**63 - 1)
# Types a filter can compare (arrays and jsonb values cannot be).
FILTERABLE = frozenset(
    {"bigint", "double precision", "numeric", "boolean", "text", "timestamptz", "date"}
)


@dataclass(frozen=True)
class Field:
    """A key path of the collection: its display path, keys, type, and column (tables)."""

    path: str
    keys: list[str]
    type: str
    column: str | None


@dataclass(frozen=True)
class Filter:
    field: Field
    op: str
    value: Any


def _typed(field: Field, raw: str) -> Any:
    kind = field.type
    try:
        if kind == "bigint":
            if not _INTEGER.match(raw) or not INT64[0] <= int(raw) <= INT64[1]:
                raise ValueError(raw)
            return int(raw)
        if kind in ("double precision", "numeric"):
            if not _NUMBER.match(raw):
                raise ValueError(raw)
            number = Decimal(raw)
            if not number.is_finite():
                raise ValueError(raw)
            return number
        if kind == "boolean":
            if raw not in ("true", "false"):
                raise ValueError(raw)
            return raw == "true"
        if kind == "timestamptz":
            stamp = datetime.fromisoformat(raw)
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        if kind == "date":
            return date.fromisoformat(raw)
    except (ValueError, InvalidOperation):
        raise ApiError(
            400, f"filter value {raw!r} is not a {kind} (the type of {field.path!r})"
        ) from None
    return raw


def parse_filters(raw_filters: list[str], fields: dict[str, Field]) -> list[Filter]:
    """Filters from `where` parameters; 400 for an unknown field, operator or value."""
    if len(raw_filters) > MAX_FILTERS:
        raise ApiError(400, f"at most {MAX_FILTERS} filters")
    filters = []
    for raw in raw_filters:
        match = _WHERE.match(raw)
        if match is None:
            raise ApiError(
                400,
                f"filter {raw[:100]!r} is not <path><operator><value>",
                {"operators": list(OPERATORS)},
            )
        field = fields.get(match["path"])
        if field is None:
            raise ApiError(
                400,
                f"no field {match['path'][:100]!r} in this collection",
                {"fields": sorted(fields)[:100]},
            )
        if field.type not in FILTERABLE:
            raise ApiError(400, f"field {field.path!r} ({field.type}) cannot be filtered on")
        if field.type == "boolean" and match["op"] not in ("=", "!="):
            raise ApiError(400, f"{field.path!r} is a boolean: only = and != apply")
        filters.append(Filter(field, match["op"], _typed(field, match["value"])))
    return filters
