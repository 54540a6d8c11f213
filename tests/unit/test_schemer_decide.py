"""schemer.decide: table or JSONB for realistic document shapes, the reasons, the columns."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from schemer import infer
from schemer.decide import (
    FEW_DOCUMENTS,
    MAX_COLUMNS,
    SQL_TYPES,
    Column,
    Decision,
    Rules,
    column_type,
    decide,
    fields,
    plan_columns,
    scalar_type,
)
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
    PathStats,
    Stats,
)

RULES = Rules(stability_threshold=0.8, max_top_level_keys=50, max_depth=3)
START = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _stats(documents: list[dict[str, Any]], rules: Rules = RULES) -> Stats:
    return infer.observe(documents, max_depth=rules.max_depth, sample_size=1000)


def _types(decision: Decision) -> dict[str, str]:
    return {c.name: c.type for c in decision.columns}


def _check_decision(decision: Decision) -> None:
    """What every decision holds, whatever the documents."""
    assert decision.storage in ("table", "jsonb")
    assert decision.reasons
    for reason in decision.reasons:
        assert isinstance(reason, str) and reason.strip()
        assert reason.isprintable()
    assert 0 < decision.confidence < 1
    assert decision.confidence_words.split(":")[0] in ("low", "medium", "high")
    for column in decision.columns:
        assert column.type in SQL_TYPES
    if decision.storage == "jsonb":
        assert decision.columns == []
        assert decision.reasons[-1] == "so: a JSONB collection with a GIN index"


# --- document shapes ---------------------------------------------------------------------


def users(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    cities = ["Oslo", "Lima", "Pune", "Kyoto", "Accra"]
    return [
        {
            "id": 1000 + i,
            "name": f"{rng.choice(['Ada', 'Linus', 'Grace', 'Ken'])} {i}",
            "email": f"user{i}@example.com",
            "age": rng.randint(18, 90),
            "active": rng.random() < 0.7,
            "signed_up": (START + timedelta(minutes=rng.randint(0, 10**6))).isoformat(),
            "address": {"city": rng.choice(cities), "zip": f"{rng.randint(1000, 9999)}"},
            "tags": rng.sample(["admin", "beta", "vip", "new"], k=rng.randint(0, 4)),
        }
        for i in range(n)
    ]


def orders(n: int, seed: int = 2) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "order_id": f"ORD-{i:05d}",
            "customer_id": rng.randint(1, 500),
            "placed_at": (START + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "total": round(rng.uniform(5, 500), 2),
            "items": [
                {"sku": f"SKU-{rng.randint(1, 99)}", "qty": rng.randint(1, 5), "price": 9.99}
                for _ in range(rng.randint(1, 4))
            ],
        }
        for i in range(n)
    ]


def sensor_readings(n: int, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    readings = []
    for i in range(n):
        temperature: float | int = round(rng.uniform(-10, 35), 1)
        if i % 5 == 0:
            temperature = int(temperature)  # some devices send whole degrees
        readings.append(
            {
                "sensor_id": f"s-{i % 4:02d}",
                "ts": (START + timedelta(seconds=30 * i)).isoformat(),
                "temperature": temperature,
                "humidity": rng.randint(20, 90),
            }
        )
    return readings


def unstable_events(n: int, seed: int = 4) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        event: dict[str, Any] = {
            "event": rng.choice(["click", "view", "buy"]),
            "at": (START + timedelta(seconds=i)).isoformat(),
            # A string in some documents, a number in others.
            "value": str(rng.randint(1, 9)) if i % 2 else rng.randint(1, 9),
        }
        for extra in rng.sample([f"extra_{k}" for k in range(12)], k=rng.randint(0, 3)):
            event[extra] = rng.randint(0, 100)
        events.append(event)
    return events


def deep_configs(n: int) -> list[dict[str, Any]]:
    """Objects six levels deep (the document itself is the first)."""
    return [
        {
            "service": f"svc{i}",
            "settings": {
                "net": {"http": {"tls": {"cipher": {"name": f"aes{i % 3}", "bits": 256}}}}
            },
        }
        for i in range(n)
    ]


def wide(n: int, keys: int = 300) -> list[dict[str, Any]]:
    return [{f"field_{k:03d}": i * k for k in range(keys)} for i in range(n)]


# --- decisions ---------------------------------------------------------------------------


def test_decide_chooses_a_table_with_typed_columns_when_users_are_stable() -> None:
    decision = decide(_stats(users(40)), RULES)
    _check_decision(decision)
    assert decision.storage == "table"
    assert _types(decision) == {
        "id": "bigint",
        "name": "text",
        "email": "text",
        "age": "bigint",
        "active": "boolean",
        "signed_up": "timestamptz",
        "address__city": "text",
        "address__zip": "text",  # digits in a string stay text
        "tags": "text[]",
    }
    assert [c.path for c in decision.columns][-3:] == [
        ("address", "city"),
        ("address", "zip"),
        ("tags",),
    ]
    assert decision.reasons[0] == "every document has the same 9 key paths"
    assert any("parent__child" in r for r in decision.reasons)
    assert decision.confidence_words.startswith("high")
    assert decision.inconsistent == []


def test_decide_keeps_line_items_as_a_jsonb_column_when_orders_hold_arrays_of_objects() -> None:
    decision = decide(_stats(orders(30)), RULES)
    _check_decision(decision)
    assert decision.storage == "table"
    assert _types(decision) == {
        "order_id": "text",
        "customer_id": "bigint",
        "placed_at": "timestamptz",
        "total": "double precision",
        "items": "jsonb",
    }
    (items_reason,) = [r for r in decision.reasons if "'items'" in r]
    assert "lists of objects" in items_reason and "jsonb" in items_reason
    assert not any("parent__child" in r for r in decision.reasons)  # nothing nested


def test_decide_widens_whole_degrees_to_double_precision_when_sensors_mix_ints_and_floats() -> None:
    readings = sensor_readings(50)
    stats = _stats(readings)
    assert set(stats.paths[("temperature",)].kinds) == {INTEGER, NUMBER}
    decision = decide(stats, RULES)
    _check_decision(decision)
    assert decision.storage == "table"
    assert _types(decision) == {
        "sensor_id": "text",
        "ts": "timestamptz",
        "temperature": "double precision",
        "humidity": "bigint",
    }
    assert decision.inconsistent == []


def test_decide_chooses_jsonb_and_names_instability_and_type_change_when_events_vary() -> None:
    stats = _stats(unstable_events(60))
    decision = decide(stats, RULES)
    _check_decision(decision)
    assert decision.storage == "jsonb"
    assert decision.inconsistent == ["value"]
    (unstable,) = [r for r in decision.reasons if r.startswith("keys come and go")]
    assert "SCHEMA_STABILITY_THRESHOLD" in unstable and "80%" in unstable
    assert "'extra_" in unstable  # the rarest keys are named
    (changing,) = [r for r in decision.reasons if r.startswith("types change")]
    assert "'value'" in changing
    assert "an integer in" in changing and "a string in" in changing
    assert decision.confidence_words.startswith("high")


def test_decide_chooses_jsonb_with_a_depth_reason_when_configs_nest_six_levels() -> None:
    stats = _stats(deep_configs(25))
    assert stats.max_depth == 6
    decision = decide(stats, RULES)
    _check_decision(decision)
    assert decision.storage == "jsonb"
    (depth,) = [r for r in decision.reasons if "deep" in r]
    assert "6 levels" in depth and "at most 3" in depth and "SCHEMA_MAX_DEPTH" in depth
    # The same documents with a depth limit that allows them make a table.
    loose = Rules(stability_threshold=0.8, max_top_level_keys=50, max_depth=6)
    assert decide(_stats(deep_configs(25), loose), loose).storage == "table"


def test_decide_chooses_jsonb_when_documents_have_300_top_level_keys() -> None:
    decision = decide(_stats(wide(20)), RULES)
    _check_decision(decision)
    assert decision.storage == "jsonb"
    assert any(r.startswith("300 top-level keys") and "at most 50" in r for r in decision.reasons)


def test_decide_refuses_a_table_when_paths_pass_max_columns() -> None:
    groups = 3
    per_group = MAX_COLUMNS // groups + 1
    documents = [
        {f"g{g}": {f"k{k}": k for k in range(per_group)} for g in range(groups)} for _ in range(10)
    ]
    stats = _stats(documents)
    assert stats.top_level_keys == groups and len(stats.paths) > MAX_COLUMNS
    decision = decide(stats, RULES)
    assert decision.storage == "jsonb"
    assert any(f"more than {MAX_COLUMNS} distinct keys" in r for r in decision.reasons)


def test_decide_refuses_a_table_when_statistics_were_truncated() -> None:
    stats = _stats(users(10))
    stats.truncated = True
    decision = decide(stats, RULES)
    assert decision.storage == "jsonb"
    assert any("too wide for a table" in r for r in decision.reasons)


def test_decide_lists_three_inconsistent_keys_and_counts_the_rest_when_many_change_type() -> None:
    documents = [{f"k{k}": (i if i % 2 else str(i)) for k in range(5)} for i in range(10)]
    decision = decide(_stats(documents), RULES)
    assert decision.storage == "jsonb"
    assert decision.inconsistent == ["k0", "k1", "k2", "k3", "k4"]
    (changing,) = [r for r in decision.reasons if r.startswith("types change")]
    assert "(and 2 more keys)" in changing
    assert "'k3'" not in changing


@pytest.mark.parametrize("count", [1, 2, FEW_DOCUMENTS - 1])
def test_decide_says_confidence_is_low_when_fewer_than_five_documents_are_seen(count: int) -> None:
    for documents in (users(count), unstable_events(count)):
        decision = decide(_stats(documents), RULES)
        _check_decision(decision)
        assert decision.confidence == 0.3
        assert decision.confidence_words.startswith("low")
        assert f"only {count} document" in decision.confidence_words


def test_decide_says_one_document_in_the_singular_when_only_one_is_seen() -> None:
    assert decide(_stats(users(1)), RULES).confidence_words.endswith("only 1 document seen so far")


def test_decide_is_not_low_confidence_when_five_documents_are_seen() -> None:
    decision = decide(_stats(users(FEW_DOCUMENTS)), RULES)
    assert not decision.confidence_words.startswith("low")
    assert decision.confidence > 0.3


def test_decide_says_medium_confidence_when_stability_is_close_to_the_threshold() -> None:
    documents: list[dict[str, Any]] = [{"a": i, "b": i} for i in range(7)] + [
        {"a": i} for i in range(3)
    ]
    decision = decide(_stats(documents), RULES)  # stability (1 + 0.7) / 2 = 85%
    assert decision.storage == "table"
    assert decision.reasons[0] == "stable: on average a key is in 85% of the documents"
    assert decision.confidence == 0.6
    assert decision.confidence_words.startswith("medium")


def test_decide_confidence_grows_with_documents_when_tables_are_clear() -> None:
    few, many = decide(_stats(users(10)), RULES), decide(_stats(users(150)), RULES)
    assert few.confidence < many.confidence <= 0.99


def test_decision_to_json_rounds_confidence_and_omits_columns_when_serialised() -> None:
    decision = decide(_stats(sensor_readings(33)), RULES)
    data = decision.to_json()
    assert set(data) == {"storage", "reasons", "confidence", "confidence_words", "inconsistent"}
    assert data["confidence"] == round(decision.confidence, 2)
    assert data["storage"] == "table"


def test_column_survives_json_when_stored_and_loaded() -> None:
    column = Column(("address", "zip.code"), "address__zip_code", "text")
    assert Column.from_json(column.to_json()) == column
    assert column.to_json() == {
        "path": ["address", "zip.code"],
        "column": "address__zip_code",
        "type": "text",
    }


def test_plan_columns_avoid_taken_names_when_given() -> None:
    columns = plan_columns(_stats(users(5)), taken=["id"])
    assert columns[0].path == ("id",) and columns[0].name != "id"
    assert columns[0].name.startswith("id_")


def test_decide_gives_columns_unique_names_when_keys_differ_only_by_case() -> None:
    documents = [{"Name": f"a{i}", "name": f"b{i}", "NAME!": f"c{i}"} for i in range(10)]
    decision = decide(_stats(documents), RULES)
    names = [c.name for c in decision.columns]
    assert decision.storage == "table"
    assert names[0] == "name" and len(set(names)) == 3


@pytest.mark.parametrize(
    "documents",
    [users(25), orders(25), sensor_readings(25), unstable_events(25), deep_configs(25), wide(5)],
    ids=["users", "orders", "sensors", "events", "configs", "wide"],
)
def test_decide_gives_plain_reasons_and_known_types_when_given_any_shape(
    documents: list[dict[str, Any]],
) -> None:
    _check_decision(decide(_stats(documents), RULES))


# --- fields ------------------------------------------------------------------------------


def test_fields_summarise_each_path_when_documents_are_observed() -> None:
    documents: list[dict[str, Any]] = [
        {"id": i, "a.b": "x" * i, "nested": {"n": i % 2 == 0}, "list": [1, 2.5]} for i in range(8)
    ]
    documents += [{"id": "eight"}, {"id": 9}]
    summary = {f["path"]: f for f in fields(_stats(documents))}
    assert list(summary) == ["id", "a\\.b", "nested.n", "list"]
    assert summary["id"] == {
        "path": "id",
        "keys": ["id"],
        "presence": 1.0,
        "kinds": {INTEGER: 9, STRING: 1},
        "element_kinds": {},
        "type": "jsonb",
        "consistent": False,
        "cardinality": 10,
        "max_length": 5,
    }
    assert summary["a\\.b"]["keys"] == ["a.b"]
    assert summary["a\\.b"]["presence"] == 0.8
    assert summary["a\\.b"]["max_length"] == 7
    assert summary["nested.n"]["type"] == "boolean"
    assert summary["nested.n"]["cardinality"] == 2
    assert summary["list"]["type"] == "double precision[]"
    assert summary["list"]["element_kinds"] == {INTEGER: 8, NUMBER: 8}
    assert summary["list"]["cardinality"] == 0  # lists are not counted


def test_fields_report_no_cardinality_when_values_pass_the_cap() -> None:
    summary = fields(_stats([{"id": i} for i in range(200)]))
    assert summary[0]["cardinality"] is None


# --- types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (set(), "text"),
        ({NULL}, "text"),
        ({BOOLEAN}, "boolean"),
        ({BOOLEAN, NULL}, "boolean"),
        ({INTEGER}, "bigint"),
        ({INTEGER, NULL}, "bigint"),
        ({NUMBER}, "double precision"),
        ({INTEGER, NUMBER}, "double precision"),
        ({BIGNUM}, "numeric"),
        ({INTEGER, BIGNUM}, "numeric"),
        ({NUMBER, BIGNUM}, "numeric"),
        ({INTEGER, NUMBER, BIGNUM}, "numeric"),
        ({DATE}, "date"),
        ({TIMESTAMP}, "timestamptz"),
        ({DATE, TIMESTAMP}, "timestamptz"),
        ({STRING}, "text"),
        ({STRING, DATE}, "text"),
        ({STRING, TIMESTAMP}, "text"),
        ({STRING, DATE, TIMESTAMP, NULL}, "text"),
        ({BOOLEAN, INTEGER}, None),
        ({STRING, INTEGER}, None),
        ({DATE, INTEGER}, None),
        ({BOOLEAN, STRING}, None),
    ],
)
def test_scalar_type_widens_or_refuses_when_kinds_mix(
    kinds: set[str], expected: str | None
) -> None:
    assert scalar_type(kinds) == expected


def _path_stats(*values: Any) -> PathStats:
    stats = PathStats(("p",))
    for value in values:
        stats.observe(value)
    return stats


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((1, 2, None), ("bigint", True)),
        ((1, 2.5), ("double precision", True)),
        ((1, 2**64), ("numeric", True)),
        (("2024-01-01", "2024-01-02T10:00:00Z"), ("timestamptz", True)),
        (("2024-01-01", "2024-01-02"), ("date", True)),
        (("2024-01-01", "soon"), ("text", True)),
        ((None, None), ("text", True)),
        ((True, False), ("boolean", True)),
        ((True, 1), ("jsonb", False)),
        (("1", 1), ("jsonb", False)),
        (([1, 2], [3]), ("bigint[]", True)),
        (([1, 2.5], []), ("double precision[]", True)),
        (([2**70], [1]), ("numeric[]", True)),
        ((["a", None], ["b"]), ("text[]", True)),
        ((["2024-01-01", "2024-01-02T00:00Z"],), ("text[]", True)),  # kept as written
        ((["2024-01-01"],), ("text[]", True)),
        (([True, False],), ("boolean[]", True)),
        (([],), ("text[]", True)),
        (([1, "a"],), ("jsonb", True)),
        (([{"a": 1}], [1]), ("jsonb", True)),
        (([{"a": 1}], None), ("jsonb", True)),
        (({"a": 1}, {}), ("jsonb", True)),
        (({"a": 1}, 1), ("jsonb", False)),
        (([1], 1), ("jsonb", False)),
        (([{"a": 1}], "x"), ("jsonb", False)),
    ],
)
def test_column_type_picks_a_column_type_when_values_are_observed(
    values: tuple[Any, ...], expected: tuple[str, bool]
) -> None:
    sql_type, consistent = column_type(_path_stats(*values))
    assert (sql_type, consistent) == expected
    assert sql_type in SQL_TYPES


def test_sql_types_hold_no_array_of_dates_when_listed() -> None:
    assert "date[]" not in SQL_TYPES and "timestamptz[]" not in SQL_TYPES
    assert {"bigint", "text[]", "jsonb", "numeric[]"} <= SQL_TYPES


def test_decide_gives_a_text_column_when_a_key_holds_only_nulls() -> None:
    documents = [
        {"id": i, "note": None, "born": date(1990, 1, 1 + i % 28).isoformat()} for i in range(10)
    ]
    decision = decide(_stats(documents), RULES)
    assert _types(decision) == {"id": "bigint", "note": "text", "born": "date"}


def test_decide_gives_numeric_when_some_integers_pass_64_bits() -> None:
    documents = [{"n": 2**64 + i if i % 3 == 0 else i} for i in range(12)]
    stats = _stats(documents)
    assert Counter(stats.paths[("n",)].kinds) == {INTEGER: 8, BIGNUM: 4}
    assert _types(decide(stats, RULES)) == {"n": "numeric"}


def test_decide_keeps_object_leaves_as_jsonb_when_paths_are_always_objects_or_arrays() -> None:
    documents = [{"id": i, "meta": {}, "pairs": [[1, 2]]} for i in range(10)]
    decision = decide(_stats(documents), RULES)
    assert decision.storage == "table"
    assert _types(decision) == {"id": "bigint", "meta": "jsonb", "pairs": "jsonb"}
    assert OBJECT in _stats(documents).paths[("meta",)].kinds
    assert OBJECTS in _stats(documents).paths[("pairs",)].kinds
    assert ARRAY not in _stats(documents).paths[("pairs",)].kinds
