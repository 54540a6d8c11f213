"""The SQL text of collection tables, from identifiers the server quoted (common.db.quoted).

Pure. Names reach these functions already quoted by PostgreSQL (`quote_ident`), types only
from decide.SQL_TYPES, and values never: every value is a bound parameter of the statement.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemer.decide import SQL_TYPES
from schemer.rows import transport_type

SCHEMA = "collections"


def _type(sql_type: str) -> str:
    if sql_type not in SQL_TYPES:
        raise ValueError(f"not a column type: {sql_type!r}")
    return sql_type


def qualified(qtable: str) -> str:
    return f"{SCHEMA}.{qtable}"


def create_table(qtable: str, columns: Sequence[tuple[str, str]]) -> str:
    """A typed table: the system columns, one column per key path, and `_overflow`."""
    body = "".join(f",\n    {name} {_type(t)}" for name, t in columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(qtable)} (\n"
        "    _id bigserial PRIMARY KEY,\n"
        "    _upload_id uuid NOT NULL UNIQUE"
        f"{body},\n"
        "    _overflow jsonb,\n"
        "    _created_at timestamptz NOT NULL DEFAULT now()\n)"
    )


def create_jsonb_table(qtable: str, qindex: str) -> str:
    """A JSONB collection: the document whole, with a GIN index for containment (@>)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(qtable)} (\n"
        "    _id bigserial PRIMARY KEY,\n"
        "    _upload_id uuid NOT NULL UNIQUE,\n"
        "    document jsonb NOT NULL,\n"
        "    _created_at timestamptz NOT NULL DEFAULT now()\n);\n"
        f"CREATE INDEX IF NOT EXISTS {qindex} ON {qualified(qtable)}"
        " USING gin (document jsonb_path_ops)"
    )


def _value(position: int, sql_type: str) -> str:
    """How column `position` of the unnested parameters becomes its column's value."""
    ref = f"v.c{position}"
    if sql_type == "jsonb":
        return f"{ref}::jsonb"
    if sql_type.endswith("[]"):
        return (
            f"CASE WHEN {ref} IS NULL THEN NULL ELSE"
            f" ARRAY(SELECT jsonb_array_elements_text({ref}::jsonb))::{_type(sql_type)} END"
        )
    return ref


def insert_rows(qtable: str, columns: Sequence[tuple[str, str]]) -> str:
    """Insert a batch, one parameter array per column ($1 upload ids, then the columns, then
    the overflow as JSON text); a row already there (a redelivery) is kept and returned."""
    types = ["uuid", *(transport_type(_type(t)) for _, t in columns), "text"]
    params = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    names = ", ".join(f"c{i}" for i in range(len(types)))
    overflow = f"v.c{len(types) - 1}::jsonb"
    values = ", ".join(
        ["v.c0", *(_value(i, t) for i, (_, t) in enumerate(columns, start=1)), overflow]
    )
    targets = ", ".join(["_upload_id", *(name for name, _ in columns), "_overflow"])
    return (
        f"INSERT INTO {qualified(qtable)} ({targets})\n"
        f"SELECT {values}\nFROM unnest({params}) AS v({names})\n"
        "ON CONFLICT (_upload_id) DO UPDATE SET _upload_id = EXCLUDED._upload_id\n"
        "RETURNING _id, _upload_id"
    )


def insert_documents(qtable: str) -> str:
    """Insert a batch into a JSONB collection ($1 upload ids, $2 documents as JSON text)."""
    return (
        f"INSERT INTO {qualified(qtable)} (_upload_id, document)\n"
        "SELECT u, d::jsonb FROM unnest($1::uuid[], $2::text[]) AS v(u, d)\n"
        "ON CONFLICT (_upload_id) DO UPDATE SET _upload_id = EXCLUDED._upload_id\n"
        "RETURNING _id, _upload_id"
    )


def alter_table(qtable: str, changes: Sequence[tuple[str, str, str]]) -> str:
    """A migration: (quoted column, type, "add" | "widen") each."""
    clauses = []
    for name, sql_type, action in changes:
        if action == "add":
            clauses.append(f"ADD COLUMN IF NOT EXISTS {name} {_type(sql_type)}")
        else:
            clauses.append(f"ALTER COLUMN {name} TYPE {_type(sql_type)} USING {name}::{sql_type}")
    return f"ALTER TABLE {qualified(qtable)}\n    " + ",\n    ".join(clauses)


def update_rows(qtable: str, columns: Sequence[tuple[str, str]]) -> str:
    """Set columns of rows by id ($1 row ids, then one array per column, then the overflow
    left, as JSON text or null)."""
    types = ["bigint", *(transport_type(_type(t)) for _, t in columns), "text"]
    params = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    names = ", ".join(f"c{i}" for i in range(len(types)))
    sets = ", ".join(
        [
            *(
                f"{name} = coalesce({_value(i, t)}, t.{name})"
                for i, (name, t) in enumerate(columns, start=1)
            ),
            f"_overflow = v.c{len(types) - 1}::jsonb",
        ]
    )
    return (
        f"UPDATE {qualified(qtable)} AS t SET {sets}\n"
        f"FROM unnest({params}) AS v({names}) WHERE t._id = v.c0"
    )


def drop_table(qtable: str) -> str:
    """A deleted owner's collection table goes with it."""
    return f"DROP TABLE IF EXISTS {qualified(qtable)}"
