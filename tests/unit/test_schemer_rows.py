"""schemer.rows, schemer.migrations, schemer.naming and the DDL text of schemer.repo.ddl."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from common import jsontext
from schemer import infer
from schemer.decide import SQL_TYPES, Column, Rules, decide
from schemer.identifiers import SYSTEM_COLUMNS
from schemer.migrations import Change, apply, describe, propose
from schemer.naming import generated_name
from schemer.repo import ddl
from schemer.rows import Misfit, Row, convert, nest, to_row, transport_type

MAX_DEPTH = 3

# --- convert -----------------------------------------------------------------------------


@pytest.mark.parametrize("sql_type", sorted(SQL_TYPES))
def test_convert_passes_null_through_when_the_value_is_none(sql_type: str) -> None:
    assert convert(None, sql_type) is None


@pytest.mark.parametrize(
    ("value", "sql_type", "expected"),
    [
        ("hello", "text", "hello"),
        ("", "text", ""),
        ("2024-01-01", "text", "2024-01-01"),  # a date-like string in a text column stays text
        (True, "boolean", True),
        (False, "boolean", False),
        (0, "bigint", 0),
        (2**63 - 1, "bigint", 2**63 - 1),
        (-(2**63), "bigint", -(2**63)),
        (1.5, "double precision", 1.5),
        (-0.0, "double precision", -0.0),
        (2**53 - 1, "double precision", float(2**53 - 1)),
        (2**70, "numeric", Decimal(2**70)),
        (123456789012345678901234567890, "numeric", Decimal("123456789012345678901234567890")),
        (0.1, "numeric", Decimal("0.1")),  # as written, not the binary float's expansion
        (7, "numeric", Decimal(7)),
        ("2024-01-31", "date", date(2024, 1, 31)),
    ],
)
def test_convert_gives_the_column_value_when_the_value_fits(
    value: Any, sql_type: str, expected: Any
) -> None:
    result = convert(value, sql_type)
    assert result == expected
    assert type(result) is type(expected)


def test_convert_gives_a_float_when_an_integer_goes_to_double_precision() -> None:
    result = convert(3, "double precision")
    assert result == 3.0 and isinstance(result, float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-31T12:30:00Z", datetime(2024, 1, 31, 12, 30, tzinfo=UTC)),
        (
            "2024-01-31T12:30:00+02:00",
            datetime(2024, 1, 31, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2024-01-31 12:30", datetime(2024, 1, 31, 12, 30, tzinfo=UTC)),  # naive: UTC
        ("2024-01-31", datetime(2024, 1, 31, tzinfo=UTC)),  # a date in a timestamp column
    ],
)
def test_convert_gives_an_aware_datetime_when_a_timestamp_column_gets_iso_text(
    text: str, expected: datetime
) -> None:
    stamp = convert(text, "timestamptz")
    assert stamp == expected
    assert isinstance(stamp, datetime) and stamp.tzinfo is not None


@pytest.mark.parametrize(
    ("value", "sql_type"),
    [
        (1, "text"),
        (["a"], "text"),
        ({"a": 1}, "text"),
        (1, "boolean"),
        ("true", "boolean"),
        ("12", "bigint"),  # a string in a bigint column
        (True, "bigint"),  # a bool is not a number
        (False, "bigint"),
        (1.0, "bigint"),
        (2**63, "bigint"),
        (-(2**63) - 1, "bigint"),
        (True, "double precision"),
        (2**53, "double precision"),  # would lose precision
        (-(2**53), "double precision"),
        (2**64, "double precision"),
        (10**400, "double precision"),  # too large for a float at all
        ("1.5", "double precision"),
        (True, "numeric"),
        ("1", "numeric"),
        ("2024-02-30T00:00", "timestamptz"),
        ("tomorrow", "timestamptz"),
        (1700000000, "timestamptz"),
        ("2024-01-31T00:00:00Z", "date"),
        ("2024-02-30", "date"),
        (20240131, "date"),
        ({"a": 1}, "bigint"),
        ([1], "bigint"),
    ],
)
def test_convert_raises_misfit_when_the_value_does_not_fit_its_column(
    value: Any, sql_type: str
) -> None:
    with pytest.raises(Misfit):
        convert(value, sql_type)


@pytest.mark.parametrize(
    ("value", "sql_type", "text"),
    [
        (["a", None, "b"], "text[]", '["a",null,"b"]'),
        ([1, 2, -3], "bigint[]", "[1,2,-3]"),
        ([1, 2.5], "double precision[]", "[1,2.5]"),
        ([2**70, 1], "numeric[]", "[1180591620717411303424,1]"),
        ([True, False], "boolean[]", "[true,false]"),
        ([], "bigint[]", "[]"),
        ({"a": [1, {"b": None}]}, "jsonb", '{"a":[1,{"b":null}]}'),
        ({"big": 2**80}, "jsonb", '{"big":1208925819614629174706176}'),
        ("just text", "jsonb", '"just text"'),
        (5, "jsonb", "5"),
    ],
)
def test_convert_gives_json_text_when_the_column_is_an_array_or_jsonb(
    value: Any, sql_type: str, text: str
) -> None:
    assert convert(value, sql_type) == text
    assert jsontext.loads(text) == value


@pytest.mark.parametrize(
    ("value", "sql_type"),
    [
        ("a", "text[]"),  # not a list
        ({"a": 1}, "text[]"),
        (1, "bigint[]"),
        (["a", 1], "text[]"),  # a list with a wrong element
        ([1, True], "bigint[]"),
        ([1, "2"], "bigint[]"),
        ([[1]], "bigint[]"),
        ([{"a": 1}], "text[]"),
        ([1, 2**53], "double precision[]"),
        ([1], "boolean[]"),
    ],
)
def test_convert_raises_misfit_when_an_array_column_gets_a_misfit(
    value: Any, sql_type: str
) -> None:
    with pytest.raises(Misfit):
        convert(value, sql_type)


@pytest.mark.parametrize(
    ("sql_type", "carried"),
    [
        ("jsonb", "text"),
        ("text[]", "text"),
        ("bigint[]", "text"),
        ("numeric[]", "text"),
        ("bigint", "bigint"),
        ("timestamptz", "timestamptz"),
        ("double precision", "double precision"),
        ("text", "text"),
    ],
)
def test_transport_type_carries_arrays_and_jsonb_as_text_when_inserting(
    sql_type: str, carried: str
) -> None:
    assert transport_type(sql_type) == carried


# --- to_row and nest ---------------------------------------------------------------------

COLUMNS = [
    Column(("id",), "id", "bigint"),
    Column(("name",), "name", "text"),
    Column(("score",), "score", "double precision"),
    Column(("balance",), "balance", "numeric"),
    Column(("active",), "active", "boolean"),
    Column(("seen",), "seen", "timestamptz"),
    Column(("born",), "born", "date"),
    Column(("address", "city"), "address__city", "text"),
    Column(("address", "zip"), "address__zip", "text"),
    Column(("tags",), "tags", "text[]"),
    Column(("items",), "items", "jsonb"),
]


def _back(value: Any, sql_type: str) -> Any:
    """A column value as the JSON value it stands for."""
    if sql_type == "jsonb" or sql_type.endswith("[]"):
        return jsontext.loads(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def rebuild(row: Row, columns: list[Column]) -> dict[str, Any]:
    """The document a row holds: its non-null columns at their paths, the overflow merged in
    (as the gateway does: a null column and an absent key read the same)."""
    leaves = {
        c.path: _back(v, c.type) for c, v in zip(columns, row.values, strict=True) if v is not None
    }
    if row.overflow is not None:
        leaves.update(infer.flatten(row.overflow, max_depth=64).leaves)
    return nest(leaves)


DOCUMENTS: list[dict[str, Any]] = [
    {  # everything fits
        "id": 1,
        "name": "Ada",
        "score": 9.5,
        "balance": 2**70,
        "active": True,
        "seen": "2024-01-31T12:30:00+00:00",
        "born": "1990-05-17",
        "address": {"city": "Oslo", "zip": "0150"},
        "tags": ["a", "b"],
        "items": [{"sku": "A", "qty": 2}],
    },
    {  # misfits: a string id, a bool score, a list name, tags not a list
        "id": "one",
        "name": ["Ada"],
        "score": False,
        "tags": "a,b",
        "address": {"city": 5, "zip": "0150"},
    },
    {  # keys without a column, at the top and nested, and an empty object
        "id": 2,
        "nickname": "ace",
        "address": {"city": "Lima", "street": {"name": "Main", "no": 4}},
        "prefs": {},
        "tags": ["x", 3],
    },
    {  # too big for its columns
        "id": 2**63,
        "score": 2**53 + 1,
        "seen": "not a time",
        "born": "2024-01-31T00:00:00+00:00",
    },
    {"address": "not an object", "extra": [1, [2, {"three": 3}]]},
    {"address": {"city": {"deep": {"deeper": {"deepest": 1}}}}},
    {},
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_to_row_loses_nothing_when_columns_and_overflow_are_put_back_together(
    document: dict[str, Any],
) -> None:
    row = to_row(document, COLUMNS, MAX_DEPTH)
    assert len(row.values) == len(COLUMNS)
    assert rebuild(row, COLUMNS) == document


def test_to_row_puts_fitting_values_in_columns_when_a_document_fits() -> None:
    row = to_row(DOCUMENTS[0], COLUMNS, MAX_DEPTH)
    values = dict(zip((c.name for c in COLUMNS), row.values, strict=True))
    assert values["id"] == 1
    assert values["balance"] == Decimal(2**70)
    assert values["seen"] == datetime(2024, 1, 31, 12, 30, tzinfo=UTC)
    assert values["born"] == date(1990, 5, 17)
    assert values["address__city"] == "Oslo"
    assert values["tags"] == '["a","b"]'
    assert values["items"] == '[{"sku":"A","qty":2}]'
    assert row.overflow is None
    assert row.misfits == []


def test_to_row_sends_misfits_to_overflow_and_reports_them_when_values_do_not_fit() -> None:
    row = to_row(DOCUMENTS[1], COLUMNS, MAX_DEPTH)
    values = dict(zip((c.name for c in COLUMNS), row.values, strict=True))
    assert values["id"] is None and values["score"] is None and values["tags"] is None
    assert values["address__zip"] == "0150"
    assert row.overflow == {
        "id": "one",
        "name": ["Ada"],
        "score": False,
        "tags": "a,b",
        "address": {"city": 5},
    }
    assert sorted(row.misfits) == sorted(
        [
            (("id",), "string"),
            (("name",), "array"),
            (("score",), "boolean"),
            (("address", "city"), "integer"),
            (("tags",), "string"),
        ]
    )


def test_to_row_reports_unknown_keys_when_the_table_has_no_column_for_them() -> None:
    row = to_row(DOCUMENTS[2], COLUMNS, MAX_DEPTH)
    assert row.overflow == {
        "nickname": "ace",
        "address": {"street": {"name": "Main", "no": 4}},
        "prefs": {},
        "tags": ["x", 3],
    }
    assert sorted(row.misfits) == sorted(
        [
            (("nickname",), "string"),
            (("address", "street", "name"), "string"),
            (("address", "street", "no"), "integer"),
            (("prefs",), "object"),
            (("tags",), "array"),
        ]
    )


def test_to_row_sends_big_integers_to_overflow_when_columns_cannot_hold_them() -> None:
    row = to_row(DOCUMENTS[3], COLUMNS, MAX_DEPTH)
    assert row.overflow is not None
    assert row.overflow["id"] == 2**63
    assert row.overflow["score"] == 2**53 + 1  # exact, not rounded to a float
    assert isinstance(row.overflow["score"], int)
    assert (("id",), "bignum") in row.misfits
    assert (("score",), "integer") in row.misfits
    assert (("born",), "timestamp") in row.misfits


def test_to_row_gives_the_same_row_when_a_key_is_null_or_absent() -> None:
    # Documented: a table row does not tell an absent key from a null (gateway _document).
    null = to_row({"id": 1, "name": None}, COLUMNS, MAX_DEPTH)
    assert null == to_row({"id": 1}, COLUMNS, MAX_DEPTH)
    assert null.misfits == [] and null.overflow is None


def test_to_row_keeps_deep_objects_whole_when_they_pass_the_depth_limit() -> None:
    columns = [Column(("a", "b"), "a__b", "jsonb")]
    document = {"a": {"b": {"c": {"d": 1}}}}
    row = to_row(document, columns, max_depth=2)
    assert row.values == ['{"c":{"d":1}}'] and row.overflow is None


def test_nest_rebuilds_nested_objects_when_given_leaves() -> None:
    leaves: dict[tuple[str, ...], Any] = {
        ("a", "b"): 1,
        ("a", "c", "d"): [1],
        ("e",): {},
        ("a", "c", "f"): None,
    }
    assert nest(leaves) == {"a": {"b": 1, "c": {"d": [1], "f": None}}, "e": {}}
    assert nest({}) == {}


@pytest.mark.parametrize(
    "document",
    [
        {"a": 1, "b": {"c": "x", "d": {"e": [1, 2]}}},
        {"a.b": 1, "a": {"b": 2}},
        {"": {"": 0}},
        {"x": {"y": {}}, "z": [{"w": {}}]},
    ],
)
def test_nest_inverts_flatten_when_documents_nest(document: dict[str, Any]) -> None:
    for max_depth in (1, 2, 64):
        assert nest(infer.flatten(document, max_depth).leaves) == document


def test_to_row_fits_a_table_decided_for_the_same_documents_when_they_are_stable() -> None:
    documents = [
        {"id": i, "at": f"2024-01-{1 + i % 28:02d}T10:00:00+00:00", "v": i / 2, "tags": ["t"]}
        for i in range(20)
    ]
    stats = infer.observe(documents, max_depth=MAX_DEPTH, sample_size=100)
    decision = decide(stats, Rules(0.8, 50, MAX_DEPTH))
    assert decision.storage == "table"
    for document in documents:
        row = to_row(document, decision.columns, MAX_DEPTH)
        assert row.overflow is None and row.misfits == []
        assert rebuild(row, decision.columns) == document


# --- migrations --------------------------------------------------------------------------

TABLE = [
    Column(("id",), "id", "bigint"),
    Column(("price",), "price", "double precision"),
    Column(("day",), "day", "date"),
    Column(("name",), "name", "text"),
]


def _misfits(*documents: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    misfits: list[tuple[tuple[str, ...], str]] = []
    for document in documents:
        misfits += to_row(document, TABLE, MAX_DEPTH).misfits
    return misfits


@pytest.mark.parametrize(
    ("values", "sql_type"),
    [
        ((1, 2), "bigint"),
        ((1, 2.5), "double precision"),
        (("a", "b"), "text"),
        (("2024-01-01T00:00:00Z",), "timestamptz"),
        (("2024-01-01", "2024-01-02"), "date"),
        ((True,), "boolean"),
        ((2**70,), "numeric"),
        (("a", 1), "jsonb"),
        (([1, 2],), "jsonb"),
        (({},), "jsonb"),
        (([{"a": 1}],), "jsonb"),
    ],
)
def test_propose_adds_a_typed_column_when_a_new_key_arrives(
    values: tuple[Any, ...], sql_type: str
) -> None:
    changes = propose(TABLE, _misfits(*({"id": 1, "colour": v} for v in values)), [])
    assert changes == [Change(("colour",), "colour", sql_type, "add")]
    assert sql_type in SQL_TYPES


def test_propose_ignores_nulls_when_a_new_key_is_only_null() -> None:
    assert propose(TABLE, [(("colour",), "null")], []) == []


def test_propose_names_new_columns_uniquely_when_keys_clash_with_taken_names() -> None:
    changes = propose(
        TABLE,
        [
            (("Name",), "string"),
            (("NAME!",), "string"),
            (("document",), "string"),
            (("a", "b"), "integer"),
        ],
        [],
    )
    names = [c.column for c in changes]
    assert len(set(names)) == 4
    assert not set(names) & ({c.name for c in TABLE} | SYSTEM_COLUMNS)
    assert names[3] == "a__b"
    assert all(c.action == "add" for c in changes)


def test_propose_widens_bigint_to_numeric_when_floats_arrive() -> None:
    changes = propose(TABLE, _misfits({"id": 1.5}), [])
    assert changes == [Change(("id",), "id", "numeric", "widen", "bigint")]


def test_propose_widens_bigint_to_numeric_when_integers_pass_64_bits() -> None:
    changes = propose(TABLE, _misfits({"id": 2**64}), [])
    assert changes == [Change(("id",), "id", "numeric", "widen", "bigint")]


def test_propose_widens_date_to_timestamptz_when_timestamps_arrive() -> None:
    changes = propose(TABLE, _misfits({"day": "2024-01-31T10:00:00Z"}), [])
    assert changes == [Change(("day",), "day", "timestamptz", "widen", "date")]


@pytest.mark.parametrize(
    "document",
    [
        {"id": "12"},  # a string where numbers were
        {"id": True},
        {"id": [1]},
        {"price": "cheap"},
        {"day": "someday"},
        {"name": 5},
    ],
)
def test_propose_changes_nothing_when_a_misfit_cannot_widen_its_column(
    document: dict[str, Any],
) -> None:
    misfits = _misfits(document)
    assert misfits  # the value did not fit
    assert propose(TABLE, misfits, []) == []


def test_propose_changes_nothing_when_a_date_column_gets_timestamps_and_strings() -> None:
    assert propose(TABLE, _misfits({"day": "2024-01-31T10:00:00Z"}, {"day": "later"}), []) == []


def test_propose_widens_double_precision_to_numeric_when_integers_pass_2_pow_53() -> None:
    misfits = _misfits({"price": 2**53 + 1})
    assert misfits == [(("price",), "integer")]
    assert propose(TABLE, misfits, []) == [
        Change(("price",), "price", "numeric", "widen", "double precision")
    ]


def test_propose_keeps_and_extends_pending_changes_when_more_misfits_arrive() -> None:
    pending = propose(TABLE, _misfits({"colour": "red"}), [])
    assert pending == [Change(("colour",), "colour", "text", "add")]
    changes = propose(TABLE, _misfits({"colour": 3, "size": 4, "id": 1.5}), pending)
    assert changes == [
        pending[0],  # kept as it was
        Change(("size",), "size", "bigint", "add"),
        Change(("id",), "id", "numeric", "widen", "bigint"),
    ]
    # A new key whose plain name a pending change holds gets another name.
    clash = propose(TABLE, [(("Colour",), "string")], pending)
    assert clash[0] == pending[0] and clash[1].column not in {"colour", *[c.name for c in TABLE]}


def test_propose_does_not_widen_again_when_a_widening_is_pending() -> None:
    pending = [Change(("id",), "id", "numeric", "widen", "bigint")]
    assert propose(TABLE, _misfits({"id": 2.5}), pending) == pending


def test_apply_adds_and_widens_columns_when_changes_are_made() -> None:
    changes = [
        Change(("id",), "id", "numeric", "widen", "bigint"),
        Change(("colour",), "colour", "text", "add"),
    ]
    columns = apply(TABLE, changes)
    assert columns == [
        Column(("id",), "id", "numeric"),
        *TABLE[1:],
        Column(("colour",), "colour", "text"),
    ]
    assert TABLE[0].type == "bigint"  # the original is left alone
    assert apply(TABLE, []) == TABLE


@pytest.mark.parametrize(
    "change",
    [
        Change(("a", "b.c"), "a__b_c", "text", "add"),
        Change(("id",), "id", "numeric", "widen", "bigint"),
    ],
)
def test_change_survives_json_when_stored_and_loaded(change: Change) -> None:
    data = jsontext.loads(jsontext.dumps(change.to_json()))
    assert data["from"] == change.previous
    assert Change.from_json(data) == change


def test_describe_says_what_a_change_does_when_shown_to_people() -> None:
    assert describe(Change(("a", "b"), "a__b", "text", "add")) == "add column a__b text for 'a.b'"
    assert (
        describe(Change(("id",), "id", "numeric", "widen", "bigint"))
        == "widen id from bigint to numeric"
    )


# --- naming ------------------------------------------------------------------------------

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["id", "name", "email", "age"], "id_name_email"),
        (["Order ID", "Placed At"], "order_id_placed_at"),
        (["prénom", "Straße"], "prenom_strae"),
        (["\uff2e\uff41\uff4d\uff45"], "name"),
        (["id", "ID", "Id!", "name"], "id_name"),  # duplicates once
        (["名前", "😀", "!!!", ""], "documents"),
        ([], "documents"),
        (["1st", "2nd"], "c_1st_2nd"),
        (["_id", "__v"], "id_v"),
        (["123"], "c_123"),
        (["名前", "city"], "city"),
        (["a; DROP TABLE uploads; --"], "a_drop_table_uploads"),
    ],
)
def test_generated_name_is_readable_when_keys_are_given(keys: list[str], expected: str) -> None:
    name = generated_name(keys, [])
    assert name == expected
    assert NAME.match(name)


def test_generated_name_counts_up_when_the_name_is_taken() -> None:
    assert generated_name(["id", "name"], ["id_name"]) == "id_name_2"
    assert generated_name(["id", "name"], ["id_name", "id_name_2"]) == "id_name_3"
    assert generated_name([], ["documents"]) == "documents_2"
    assert generated_name(["x"], ["y"]) == "x"


@pytest.mark.parametrize(
    "keys",
    [
        ["x" * 100, "y" * 100],
        ["a" * 39, "b"],
        ["1" * 100],
        ["_" * 50 + "z"],
        ["é" * 80],
    ],
)
def test_generated_name_stays_short_and_valid_when_keys_are_long(keys: list[str]) -> None:
    taken = {generated_name(keys, [])}
    taken.add(generated_name(keys, taken))
    for name in taken:
        assert NAME.match(name), name
        assert len(name) <= 40 + len("_2")
    assert len(taken) == 2


# --- DDL text ----------------------------------------------------------------------------

TYPED = [
    ('"id"', "bigint"),
    ('"Name"', "text"),
    ('"tags"', "text[]"),
    ('"items"', "jsonb"),
    ('"n"', "numeric[]"),
]
PLACEHOLDER = re.compile(r"\$(\d+)")


def _placeholders(sql: str) -> list[int]:
    return sorted(int(n) for n in PLACEHOLDER.findall(sql))


def test_create_table_lists_system_and_quoted_columns_when_typed() -> None:
    sql = ddl.create_table('"my table"', TYPED)
    assert sql.startswith('CREATE TABLE IF NOT EXISTS collections."my table" (')
    for name, sql_type in TYPED:
        assert f"    {name} {sql_type}," in sql
    for system in (
        "_id bigserial PRIMARY KEY",
        "_upload_id uuid NOT NULL UNIQUE",
        "_overflow jsonb",
    ):
        assert system in sql
    assert _placeholders(sql) == []
    assert ddl.create_table('"t"', []).count(",") == 3


@pytest.mark.parametrize(
    "bad",
    [
        "bigint; DROP TABLE uploads",
        "integer",
        "date[]",
        "timestamptz[]",
        "jsonb[]",
        "",
        "TEXT",
        "text ",
    ],
)
def test_ddl_builders_raise_when_a_type_is_not_a_column_type(bad: str) -> None:
    with pytest.raises(ValueError, match="not a column type"):
        ddl.create_table('"t"', [('"a"', bad)])
    with pytest.raises(ValueError, match="not a column type"):
        ddl.alter_table('"t"', [('"a"', bad, "add")])
    with pytest.raises(ValueError, match="not a column type"):
        ddl.alter_table('"t"', [('"a"', bad, "widen")])


@pytest.mark.parametrize("bad", ["evil[]", "date[]", "bigint; DROP TABLE x --[]"])
def test_insert_and_update_rows_raise_when_an_array_type_is_not_a_column_type(bad: str) -> None:
    with pytest.raises(ValueError):
        ddl.insert_rows('"t"', [('"a"', bad)])
    with pytest.raises(ValueError):
        ddl.update_rows('"t"', [('"a"', bad)])


@pytest.mark.parametrize("builder", [ddl.insert_rows, ddl.update_rows])
def test_insert_and_update_rows_raise_when_a_scalar_type_is_not_a_column_type(
    builder: Any,
) -> None:
    with pytest.raises(ValueError):
        builder('"t"', [('"a"', "bigint[]); DROP TABLE uploads; --")])


@pytest.mark.parametrize("count", [0, 1, 5])
def test_insert_rows_has_one_placeholder_per_column_when_columns_are_given(count: int) -> None:
    columns = (TYPED * 2)[:count]
    sql = ddl.insert_rows('"t"', columns)
    assert _placeholders(sql) == list(range(1, count + 3))  # upload ids, columns, overflow
    assert sql.startswith('INSERT INTO collections."t" (_upload_id, ')
    targets = sql.split("(", 1)[1].split(")", 1)[0]
    assert targets == ", ".join(["_upload_id", *(n for n, _ in columns), "_overflow"])
    assert "$1::uuid[]" in sql and f"${count + 2}::text[]" in sql
    assert "ON CONFLICT (_upload_id)" in sql


def test_insert_rows_carries_each_column_by_its_transport_type_when_typed() -> None:
    sql = ddl.insert_rows('"t"', TYPED)
    assert "$2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]" in sql
    assert "v.c4::jsonb" in sql  # the jsonb column
    assert "ARRAY(SELECT jsonb_array_elements_text(v.c3::jsonb))::text[]" in sql
    assert "ARRAY(SELECT jsonb_array_elements_text(v.c5::jsonb))::numeric[]" in sql
    assert "v.c6::jsonb" in sql  # the overflow


def test_insert_documents_has_two_placeholders_when_built() -> None:
    sql = ddl.insert_documents('"docs"')
    assert _placeholders(sql) == [1, 2]
    assert 'collections."docs"' in sql and "d::jsonb" in sql


def test_create_jsonb_table_indexes_the_document_when_built() -> None:
    sql = ddl.create_jsonb_table('"docs"', '"docs_gin"')
    assert 'CREATE TABLE IF NOT EXISTS collections."docs"' in sql
    assert 'CREATE INDEX IF NOT EXISTS "docs_gin" ON collections."docs" USING gin' in sql
    assert "document jsonb NOT NULL" in sql
    assert _placeholders(sql) == []


def test_alter_table_adds_and_widens_when_changes_are_given() -> None:
    sql = ddl.alter_table('"t"', [('"colour"', "text", "add"), ('"id"', "numeric", "widen")])
    assert sql == (
        'ALTER TABLE collections."t"\n'
        '    ADD COLUMN IF NOT EXISTS "colour" text,\n'
        '    ALTER COLUMN "id" TYPE numeric USING "id"::numeric'
    )


@pytest.mark.parametrize("count", [0, 1, 5])
def test_update_rows_has_one_placeholder_per_column_when_columns_are_given(count: int) -> None:
    columns = (TYPED * 2)[:count]
    sql = ddl.update_rows('"t"', columns)
    assert _placeholders(sql) == list(range(1, count + 3))  # row ids, columns, overflow
    assert "$1::bigint[]" in sql and "WHERE t._id = v.c0" in sql
    for i, (name, _) in enumerate(columns, start=1):
        assert f"{name} = coalesce(" in sql and f"t.{name})" in sql
        assert f"v.c{i}" in sql
    assert f"_overflow = v.c{count + 1}::jsonb" in sql


def test_propose_adds_no_columns_beyond_the_limit_when_documents_grow_wide() -> None:
    from schemer.decide import MAX_COLUMNS

    columns = [Column((f"k{i}",), f"k{i}", "bigint") for i in range(MAX_COLUMNS - 2)]
    misfits: list[tuple[tuple[str, ...], str]] = [((f"new{i}",), "integer") for i in range(10)]
    changes = propose(columns, misfits, [])
    assert [c.column for c in changes] == ["new0", "new1"]
