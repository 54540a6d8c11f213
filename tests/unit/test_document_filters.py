"""gateway.document_filters (the `where` filters of a collection's documents) and
common.jsontext (JSON without losing integers)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from common import jsontext
from gateway.document_filters import FILTERABLE, MAX_FILTERS, OPERATORS, Field, parse_filters
from gateway.errors import ApiError

FIELDS = {
    f.path: f
    for f in [
        Field("id", ["id"], "bigint", "id"),
        Field("name", ["name"], "text", "name"),
        Field("score", ["score"], "double precision", "score"),
        Field("balance", ["balance"], "numeric", "balance"),
        Field("active", ["active"], "boolean", "active"),
        Field("seen", ["seen"], "timestamptz", "seen"),
        Field("born", ["born"], "date", "born"),
        Field("address.city", ["address", "city"], "text", "address__city"),
        Field("a\\.b", ["a.b"], "text", None),
        Field("tags", ["tags"], "text[]", "tags"),
        Field("items", ["items"], "jsonb", "items"),
        Field("counts", ["counts"], "bigint[]", "counts"),
    ]
}


def _status(raw: list[str]) -> int:
    with pytest.raises(ApiError) as caught:
        parse_filters(raw, FIELDS)
    return caught.value.status


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">="])
def test_parse_filters_reads_each_operator_when_a_filter_compares_a_number(op: str) -> None:
    (parsed,) = parse_filters([f"id{op}42"], FIELDS)
    assert parsed.field is FIELDS["id"]
    assert parsed.op == op
    assert parsed.value == 42 and isinstance(parsed.value, int)


def test_parse_filters_lists_every_operator_when_asked() -> None:
    assert set(OPERATORS) == {"=", "!=", "<", "<=", ">", ">="}


@pytest.mark.parametrize(
    ("raw", "path", "op", "value"),
    [
        ("id>=-7", "id", ">=", -7),
        ("name=Ada Lovelace", "name", "=", "Ada Lovelace"),
        ("name=", "name", "=", ""),  # an empty string is a text value
        ("name=a=b", "name", "=", "a=b"),  # the first operator splits
        ("name!=<>", "name", "!=", "<>"),
        ("name<=z", "name", "<=", "z"),
        ("address.city=Oslo", "address.city", "=", "Oslo"),
        ("a\\.b=x", "a\\.b", "=", "x"),
        ("name=line\nbreak", "name", "=", "line\nbreak"),
        ("score<1.5", "score", "<", Decimal("1.5")),
        ("score>=-1e3", "score", ">=", Decimal("-1E+3")),
        (
            "balance=123456789012345678901234567890",
            "balance",
            "=",
            Decimal("123456789012345678901234567890"),
        ),
        ("active=true", "active", "=", True),
        ("active!=false", "active", "!=", False),
        ("seen>2024-01-31T12:00:00Z", "seen", ">", datetime(2024, 1, 31, 12, tzinfo=UTC)),
        (
            "seen<2024-01-31T12:00:00+02:00",
            "seen",
            "<",
            datetime(2024, 1, 31, 12, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("seen>=2024-01-31", "seen", ">=", datetime(2024, 1, 31, tzinfo=UTC)),
        ("born<=2024-01-31", "born", "<=", date(2024, 1, 31)),
    ],
)
def test_parse_filters_types_the_value_when_the_field_is_known(
    raw: str, path: str, op: str, value: Any
) -> None:
    (parsed,) = parse_filters([raw], FIELDS)
    assert (parsed.field.path, parsed.op, parsed.value) == (path, op, value)
    assert type(parsed.value) is type(value)


def test_parse_filters_makes_naive_timestamps_utc_when_no_offset_is_given() -> None:
    (parsed,) = parse_filters(["seen>2024-01-31T12:00:00"], FIELDS)
    assert parsed.value.tzinfo is UTC


def test_parse_filters_keeps_order_when_several_filters_are_given() -> None:
    parsed = parse_filters(["id>1", "name=x", "active=true"], FIELDS)
    assert [(f.field.path, f.op) for f in parsed] == [("id", ">"), ("name", "="), ("active", "=")]


def test_parse_filters_gives_nothing_when_no_filters_are_given() -> None:
    assert parse_filters([], FIELDS) == []
    assert parse_filters([], {}) == []


@pytest.mark.parametrize(
    "raw", ["nope=1", "ID=1", "address=Oslo", "address.City=Oslo", "a.b=x", " id=1", "tags.0=a"]
)
def test_parse_filters_answers_400_when_the_field_is_unknown(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_filters([raw], FIELDS)
    assert caught.value.status == 400
    assert "no field" in caught.value.error
    assert caught.value.details == {"fields": sorted(FIELDS)}


@pytest.mark.parametrize("raw", ["id", "name", "", "idexists", "=1", "~name"])
def test_parse_filters_answers_400_when_there_is_no_operator(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_filters([raw], FIELDS)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "raw",
    [
        "id=abc",
        "id=1.5",
        "id=",
        "id=1e3",
        "id=" + "9" * 5000,  # beyond Python's int() digit limit
        "score=fast",
        "score=NaN",
        "score=Infinity",
        "score=-inf",
        "balance=sNaN",
        "balance=",
        "active=yes",
        "active=1",
        "active=True",
        "active=",
        "seen=yesterday",
        "seen=2024-02-30T00:00:00Z",
        "seen=",
        "born=2024-13-01",
        "born=soon",
        "born=",
    ],
)
def test_parse_filters_answers_400_when_the_value_does_not_fit_the_field_type(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_filters([raw], FIELDS)
    assert caught.value.status == 400
    assert "is not a" in caught.value.error


@pytest.mark.parametrize("raw", ["id=99999999999999999999", f"id={2**63}", f"id<{-(2**63) - 1}"])
def test_parse_filters_answers_400_when_a_bigint_value_passes_64_bits(raw: str) -> None:
    assert _status([raw]) == 400


def test_parse_filters_accepts_the_bigint_range_when_values_are_at_its_ends() -> None:
    low, high = parse_filters([f"id>={-(2**63)}", f"id<={2**63 - 1}"], FIELDS)
    assert (low.value, high.value) == (-(2**63), 2**63 - 1)


@pytest.mark.parametrize("raw", ["tags=a", "items={}", "counts>1", "tags!=x"])
def test_parse_filters_answers_400_when_the_field_type_cannot_be_filtered(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_filters([raw], FIELDS)
    assert caught.value.status == 400
    assert "cannot be filtered on" in caught.value.error


def test_filterable_types_exclude_arrays_and_jsonb_when_listed() -> None:
    assert "jsonb" not in FILTERABLE and not any(t.endswith("[]") for t in FILTERABLE)
    assert {"bigint", "text", "boolean", "timestamptz", "date", "numeric"} <= FILTERABLE


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_parse_filters_answers_400_when_a_boolean_is_ordered(op: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_filters([f"active{op}true"], FIELDS)
    assert caught.value.status == 400
    assert "only = and != apply" in caught.value.error


def test_parse_filters_answers_400_when_there_are_more_than_max_filters() -> None:
    assert len(parse_filters(["id>1"] * MAX_FILTERS, FIELDS)) == MAX_FILTERS
    assert _status(["id>1"] * (MAX_FILTERS + 1)) == 400


def test_parse_filters_answers_400_when_one_of_several_filters_is_bad() -> None:
    assert _status(["id>1", "name=x", "id=x"]) == 400


def test_parse_filters_does_not_echo_a_long_path_in_full_when_the_field_is_unknown() -> None:
    with pytest.raises(ApiError) as caught:
        parse_filters(["x" * 10_000 + "=1"], FIELDS)
    assert len(caught.value.error) < 200


# --- jsontext ----------------------------------------------------------------------------

BIG = 123456789012345678901234567890


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"123456789012345678901234567890", BIG),
        (b"-123456789012345678901234567890", -BIG),
        ('{"n": 123456789012345678901234567890}', {"n": BIG}),
        (
            b'{"a": [1, 18446744073709551616, {"b": 99999999999999999999}]}',
            {"a": [1, 2**64, {"b": 10**20 - 1}]},
        ),
        (b"9223372036854775807", 2**63 - 1),
        (b"18446744073709551615", 2**64 - 1),
        (b'{"s": "12345678901234567890123", "f": 1.5}', {"s": "12345678901234567890123", "f": 1.5}),
        (b'{"x": 1, "t": "\xc3\xa9"}', {"x": 1, "t": "é"}),
        ('{"t": "名前", "n": 1000000000000000000000}', {"t": "名前", "n": 10**21}),
    ],
)
def test_loads_keeps_integers_exact_when_they_pass_64_bits(
    text: bytes | str, expected: Any
) -> None:
    value = jsontext.loads(text)
    assert value == expected
    assert not isinstance(value, float)
    if isinstance(expected, dict) and "n" in expected:
        assert isinstance(value["n"], int)


def test_loads_matches_orjson_when_numbers_are_short() -> None:
    text = b'{"a": 1, "b": 2.5, "c": [true, null, "x"], "d": {"e": -3}}'
    assert jsontext.loads(text) == orjson.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{",
        b"{'a': 1}",
        b"[1, 2,]",
        b"NaN",
        b"Infinity",
        b"1e400",
        b"-1e400",
        b'{"n": 1e400, "big": 123456789012345678901234567890}',
        b'{"big": 123456789012345678901234567890,}',
        b"123456789012345678901234567890 trailing",
        b'"\xff"',
        b"1" * 400,  # an integer beyond a double's range
    ],
)
def test_loads_raises_orjson_decode_error_when_the_text_is_not_json(text: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        jsontext.loads(text)


@pytest.mark.parametrize(
    "value",
    [
        BIG,
        -BIG,
        {"n": BIG, "s": "é名", "l": [2**64, 2**100, None, True, 1.5]},
        [{"deep": {"er": 10**30}}],
        {"plain": 1, "text": "x"},
        2**63 - 1,
    ],
)
def test_dumps_writes_big_integers_exactly_and_round_trips_when_values_are_given(
    value: Any,
) -> None:
    text = jsontext.dumps(value)
    assert isinstance(text, bytes)
    assert jsontext.loads(text) == value
    assert json.loads(text) == value  # plain JSON any reader can parse


def test_dumps_writes_compact_text_when_a_big_integer_forces_the_fallback() -> None:
    assert (
        jsontext.dumps({"n": BIG, "s": "é"})
        == '{"n":123456789012345678901234567890,"s":"é"}'.encode()
    )
    assert jsontext.dumps({"n": 1, "s": "é"}) == '{"n":1,"s":"é"}'.encode()
