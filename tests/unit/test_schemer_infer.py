"""schemer.infer: kinds of values, flattening, statistics and their merge and JSON form."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from schemer import infer
from schemer.infer import (
    ARRAY,
    BIGNUM,
    BOOLEAN,
    DATE,
    DISTINCT_CAP,
    INTEGER,
    MAX_PATHS,
    NULL,
    NUMBER,
    OBJECT,
    OBJECTS,
    STRING,
    TIMESTAMP,
    Flat,
    PathStats,
    Stats,
    flatten,
    jaccard,
    kind_of,
    parse_date,
    parse_path_key,
    parse_timestamp,
    path_key,
)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, NULL),
        (True, BOOLEAN),
        (False, BOOLEAN),
        (0, INTEGER),
        (1, INTEGER),
        (-1, INTEGER),
        (2**63 - 1, INTEGER),
        (-(2**63), INTEGER),
        (2**63, BIGNUM),
        (-(2**63) - 1, BIGNUM),
        (123456789012345678901234567890, BIGNUM),
        (0.0, NUMBER),
        (1.5, NUMBER),
        (1e300, NUMBER),
        ("", STRING),
        ("hello", STRING),
        ("2024-01-31", DATE),
        ("2024-01-31T12:30:00Z", TIMESTAMP),
        ("2024-01-31 12:30", TIMESTAMP),
        ("2024-02-30", STRING),  # no such day
        ([], ARRAY),
        ([1, "a", None], ARRAY),
        ([{"a": 1}], OBJECTS),
        ([1, [2]], OBJECTS),
        ({}, OBJECT),
        ({"a": 1}, OBJECT),
    ],
)
def test_kind_of_names_the_kind_when_given_a_json_value(value: Any, kind: str) -> None:
    assert kind_of(value) == kind


def test_kind_of_tells_booleans_from_integers_when_they_compare_equal() -> None:
    assert isinstance(True, int)  # the trap kind_of must avoid
    assert kind_of(True) == BOOLEAN and kind_of(1) == INTEGER
    assert kind_of(False) == BOOLEAN and kind_of(0) == INTEGER


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-31T12:30:00Z", datetime(2024, 1, 31, 12, 30, tzinfo=UTC)),
        ("2024-01-31T12:30", datetime(2024, 1, 31, 12, 30, tzinfo=UTC)),
        ("2024-01-31 12:30:05", datetime(2024, 1, 31, 12, 30, 5, tzinfo=UTC)),
        (
            "2024-01-31T12:30:05.123456+05:30",
            datetime(
                2024, 1, 31, 12, 30, 5, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))
            ),
        ),
        (
            "2024-01-31T12:30:05-0800",
            datetime(2024, 1, 31, 12, 30, 5, tzinfo=timezone(timedelta(hours=-8))),
        ),
        ("2024-01-31T12:30+05", datetime(2024, 1, 31, 12, 30, tzinfo=timezone(timedelta(hours=5)))),
    ],
)
def test_parse_timestamp_gives_an_aware_datetime_when_the_text_is_iso_8601(
    text: str, expected: datetime
) -> None:
    stamp = parse_timestamp(text)
    assert stamp == expected
    assert stamp is not None and stamp.tzinfo is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-01-31",  # a date, not a timestamp
        "2024-13-01T00:00",
        "2024-02-30T00:00",
        "2024-01-31T25:00",
        "2024-01-31T12:60",
        "2024-01-31T12:30:00+25:00",
        "2024-01-31T12:30:00.1234567Z",  # seven fraction digits
        "2024-01-31T12:30\n",
        " 2024-01-31T12:30",
        "2024-01-31X12:30",
        "31/01/2024 12:30",
        "\uff12\uff10\uff12\uff14-\uff10\uff11-\uff13\uff11T12:30",  # fullwidth digits
        "2024-01-31T12:30:00Z" + " " * 30,
        "x" * 1000,
        "yesterday",
    ],
)
def test_parse_timestamp_gives_none_when_the_text_is_not_a_timestamp(text: str) -> None:
    assert parse_timestamp(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-31", date(2024, 1, 31)),
        ("2024-02-29", date(2024, 2, 29)),
        ("0001-01-01", date(1, 1, 1)),
        ("9999-12-31", date(9999, 12, 31)),
        ("2023-02-29", None),  # not a leap year
        ("0000-01-01", None),
        ("2024-1-31", None),
        ("20240131", None),
        ("2024-01-31\n", None),
        ("2024-01-31T00:00", None),
        ("\u0662\u0660\u0662\u0664-\u0660\u0661-\u0663\u0661", None),  # Arabic-Indic digits
        ("", None),
    ],
)
def test_parse_date_accepts_only_calendar_dates_when_given_text(
    text: str, expected: date | None
) -> None:
    assert parse_date(text) == expected


# --- flatten -----------------------------------------------------------------------------


def test_flatten_keeps_the_document_key_order_when_objects_are_opened() -> None:
    document = {"z": 1, "a": {"y": 2, "b": 3}, "m": [1, 2], "c": None}
    flat = flatten(document, max_depth=3)
    assert list(flat.leaves) == [("z",), ("a", "y"), ("a", "b"), ("m",), ("c",)]
    assert flat.leaves[("a", "b")] == 3
    assert flat.depth == 2


def test_flatten_keeps_deeper_objects_whole_when_they_pass_the_depth_limit() -> None:
    document = {"a": {"b": {"c": {"d": 1}}}, "x": 0}
    flat = flatten(document, max_depth=2)
    assert flat.leaves == {("a", "b"): {"c": {"d": 1}}, ("x",): 0}
    assert flat.depth == 4  # the document, a, b and c: counted even where not opened
    assert flatten(document, max_depth=1).leaves == {("a",): {"b": {"c": {"d": 1}}}, ("x",): 0}
    assert flatten(document, max_depth=10).leaves == {("a", "b", "c", "d"): 1, ("x",): 0}


def test_flatten_keeps_empty_objects_as_leaves_when_they_hold_nothing() -> None:
    flat = flatten({"a": {}, "b": {"c": {}}}, max_depth=5)
    assert flat.leaves == {("a",): {}, ("b", "c"): {}}
    assert flat.depth == 2  # an empty object adds no level


def test_flatten_keeps_lists_as_leaves_when_they_hold_objects() -> None:
    items = [{"sku": "A", "qty": {"n": 1}}, {"sku": "B"}]
    flat = flatten({"items": items, "tags": ["a", "b"]}, max_depth=5)
    assert flat.leaves == {("items",): items, ("tags",): ["a", "b"]}
    assert flat.depth == 1  # objects inside lists are not nesting


@pytest.mark.parametrize(
    ("document", "depth"),
    [
        ({}, 0),
        ({"a": 1}, 1),
        ({"a": {}}, 1),
        ({"a": {"b": 1}}, 2),
        ({"a": {"b": 1}, "c": {"d": {"e": 1}}}, 3),
        ({"a": [{"b": {"c": 1}}]}, 1),
    ],
)
def test_flat_depth_counts_levels_of_objects_when_documents_nest(
    document: dict[str, Any], depth: int
) -> None:
    for max_depth in (1, 2, 10):
        assert flatten(document, max_depth).depth == depth


def test_flatten_makes_top_level_leaves_when_max_depth_is_zero() -> None:
    assert flatten({"a": {"b": 1}}, max_depth=0).leaves == {("a",): {"b": 1}}


def _deep(levels: int) -> dict[str, Any]:
    """{"k": {"k": ... {"k": 1}}} with `levels` objects, built without recursion."""
    inner: dict[str, Any] = {"k": 1}
    for _ in range(levels - 1):
        inner = {"k": inner}
    return inner


def test_flatten_does_not_recurse_when_a_document_nests_5000_levels() -> None:
    document = _deep(5000)
    opened = flatten(document, max_depth=10_000)
    assert opened.depth == 5000
    ((path, value),) = opened.leaves.items()
    assert len(path) == 5000 and value == 1
    kept = flatten(document, max_depth=3)
    assert kept.depth == 5000
    ((path, value),) = kept.leaves.items()
    assert path == ("k", "k", "k")
    assert isinstance(value, dict) and kind_of(value) == OBJECT  # not compared: == may recurse


def test_stats_observe_does_not_recurse_when_a_leaf_object_nests_5000_levels() -> None:
    stats = infer.observe([_deep(5000)], max_depth=3, sample_size=10)
    assert stats.max_depth == 5000
    assert stats.paths[("k", "k", "k")].kinds == {OBJECT: 1}


# --- path keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ("a",),
        ("a", "b"),
        ("a.b",),
        ("a.b", "c"),
        ("a\\", "b"),
        ("a\\.b",),
        ("\\",),
        ("\\\\", "."),
        ("",),
        ("", ""),
        (".", ".", "."),
        ("名前", "prénom"),
        ("a\\b.c\\.d",),
    ],
)
def test_parse_path_key_inverts_path_key_when_keys_hold_dots_and_backslashes(
    path: tuple[str, ...],
) -> None:
    assert parse_path_key(path_key(path)) == path


def test_path_key_escapes_dots_and_backslashes_when_keys_hold_them() -> None:
    assert path_key(("a", "b")) == "a.b"
    assert path_key(("a.b",)) == "a\\.b"
    assert path_key(("a\\",)) == "a\\\\"
    assert path_key(("a.b",)) != path_key(("a", "b"))


# --- PathStats and Stats -----------------------------------------------------------------


def test_path_stats_counts_kinds_elements_and_lengths_when_values_are_observed() -> None:
    stats = PathStats(("x",))
    for value in ["ab", "abcd", 3, None, [1, 2.5, "a", None, True], [], {"k": 1}, [{"o": 1}]]:
        stats.observe(value)
    assert stats.present == 8
    assert stats.kinds == {STRING: 2, INTEGER: 1, NULL: 1, ARRAY: 2, OBJECT: 1, OBJECTS: 1}
    assert stats.elements == {INTEGER: 1, NUMBER: 1, STRING: 1, NULL: 1, BOOLEAN: 1}
    assert stats.max_length == 5  # the five-element list
    assert stats.cardinality == 4  # "ab", "abcd", 3, None: lists and objects are not counted


def test_path_stats_tells_true_from_one_when_counting_distinct_values() -> None:
    stats = PathStats(("x",))
    for value in [True, 1, 1.0, "1", 1, True]:
        stats.observe(value)
    assert stats.cardinality == 4


def test_path_stats_cardinality_is_exact_up_to_the_cap_when_values_differ() -> None:
    stats = PathStats(("x",))
    for i in range(DISTINCT_CAP):
        stats.observe(i)
        stats.observe(i)  # repeats do not count
    assert stats.cardinality == DISTINCT_CAP and not stats.distinct_capped
    stats.observe(DISTINCT_CAP)
    assert stats.cardinality is None and stats.distinct_capped
    assert stats.distinct == set()  # the hashes are dropped once capped
    stats.observe("more")
    assert stats.cardinality is None and stats.distinct == set()


def test_path_stats_merge_caps_distinct_values_when_the_union_passes_the_cap() -> None:
    a, b = PathStats(("x",)), PathStats(("x",))
    for i in range(40):
        a.observe(i)
        b.observe(i + 20)  # 20 shared values
    both = PathStats.from_json(a.to_json())
    both.merge(b)
    assert both.cardinality == 60
    c = PathStats(("x",))
    for i in range(100, 110):
        c.observe(i)
    both.merge(c)
    assert both.cardinality is None and both.distinct_capped


def test_path_stats_merge_stays_capped_when_either_side_is_capped() -> None:
    capped, small = PathStats(("x",)), PathStats(("x",))
    for i in range(DISTINCT_CAP + 1):
        capped.observe(i)
    small.observe("a")
    small.merge(capped)
    assert small.distinct_capped and small.cardinality is None
    again = PathStats(("x",))
    again.observe("b")
    capped.merge(again)
    assert capped.distinct_capped and capped.cardinality is None


def test_path_stats_merge_adds_counts_and_keeps_the_longest_when_merging() -> None:
    a, b = PathStats(("x",)), PathStats(("x",))
    a.observe("abc")
    a.observe(1)
    b.observe("abcdefg")
    b.observe([1, 2])
    a.merge(b)
    assert a.present == 4
    assert a.kinds == {STRING: 2, INTEGER: 1, ARRAY: 1}
    assert a.elements == {INTEGER: 2}
    assert a.max_length == 7


def test_path_stats_survives_json_when_stored_and_loaded() -> None:
    stats = PathStats(("a.b", "c\\d"))
    for value in ["x", 2, 2.5, None, [1, "a"], True, 2**70]:
        stats.observe(value)
    data = json.loads(json.dumps(stats.to_json()))  # through real JSON text
    back = PathStats.from_json(data)
    assert back == stats
    assert back.path == ("a.b", "c\\d")
    assert back.cardinality == stats.cardinality == 6


def _user(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user {i}", "address": {"city": f"c{i % 3}"}, "tags": ["a"] * (i % 4)}


def test_stats_survive_json_when_stored_and_loaded() -> None:
    stats = infer.observe([_user(i) for i in range(30)], max_depth=3, sample_size=100)
    data = json.loads(json.dumps(stats.to_json()))
    back = Stats.from_json(data)
    assert back == stats
    assert list(back.paths) == list(stats.paths)  # first-seen order kept
    assert back.to_json() == stats.to_json()


def test_stats_from_json_gives_empty_stats_when_fields_are_missing() -> None:
    assert Stats.from_json({}) == Stats()


def test_stats_merge_equals_observing_everything_when_batches_are_merged() -> None:
    docs = [_user(i) for i in range(50)] + [{"id": "x", "extra": True} for _ in range(5)]
    whole = infer.observe(docs, max_depth=3, sample_size=1000)
    merged = infer.observe(docs[:20], max_depth=3, sample_size=1000)
    merged.merge(infer.observe(docs[20:], max_depth=3, sample_size=1000))
    assert merged.documents == whole.documents == 55
    assert merged.sampled == whole.sampled == 55
    assert merged.max_depth == whole.max_depth == 2
    assert merged.paths == whole.paths
    assert merged.paths[("id",)].kinds == {INTEGER: 50, STRING: 5}


def test_stats_merge_copies_paths_when_the_other_has_new_ones() -> None:
    a = infer.observe([{"a": 1}], 3, 10)
    b = infer.observe([{"b": 1}], 3, 10)
    a.merge(b)
    a.paths[("b",)].observe(2)
    assert b.paths[("b",)].present == 1  # merged in as a copy, not shared


def test_observe_counts_every_document_and_samples_at_most_sample_size_when_batches_are_large() -> (
    None
):
    docs = [{"i": i} for i in range(1000)]
    stats = infer.observe(docs, max_depth=3, sample_size=10)
    assert stats.documents == 1000
    assert stats.sampled == 10
    assert stats.paths[("i",)].present == 10
    assert stats.paths[("i",)].cardinality == 10  # ten different documents, evenly spread


@pytest.mark.parametrize(
    ("count", "sample_size"),
    [(0, 5), (1, 1), (3, 10), (10, 10), (10, 3), (10, 4), (7, 3), (11, 10), (101, 10), (999, 1000)],
)
def test_observe_samples_evenly_within_the_limit_when_sizes_vary(
    count: int, sample_size: int
) -> None:
    docs = [{f"k{i}": i} for i in range(count)]
    stats = infer.observe(docs, max_depth=3, sample_size=sample_size)
    assert stats.documents == count
    seen = sorted(int(path[0][1:]) for path in stats.paths)
    assert len(seen) == stats.sampled
    if count <= sample_size:
        assert seen == list(range(count))  # small batches: every document
    else:
        assert sample_size / 2 < stats.sampled <= sample_size
        assert seen[0] == 0 and seen[-1] >= count - count // sample_size - 1  # to the end
        gaps = {b - a for a, b in itertools.pairwise(seen)}
        assert len(gaps) == 1  # evenly spread


def test_observe_takes_documents_from_the_whole_batch_when_sampling() -> None:
    docs = [{"first": 1} for _ in range(50)] + [{"second": 1} for _ in range(50)]
    stats = infer.observe(docs, max_depth=3, sample_size=10)
    assert ("first",) in stats.paths and ("second",) in stats.paths


def test_stats_observe_stops_tracking_paths_when_documents_pass_max_paths() -> None:
    wide = {f"k{i}": i for i in range(MAX_PATHS + 5)}
    stats = infer.observe([wide], max_depth=3, sample_size=10)
    assert len(stats.paths) == MAX_PATHS
    assert stats.truncated
    assert ("k0",) in stats.paths and (f"k{MAX_PATHS}",) not in stats.paths
    narrow = infer.observe([{f"k{i}": i for i in range(MAX_PATHS)}], 3, 10)
    assert len(narrow.paths) == MAX_PATHS and not narrow.truncated


def test_stats_observe_still_counts_known_paths_when_truncated() -> None:
    stats = infer.observe([{f"k{i}": i for i in range(MAX_PATHS + 1)}, {"k0": 1}], 3, 10)
    assert stats.paths[("k0",)].present == 2


def test_stats_merge_truncates_when_the_union_passes_max_paths() -> None:
    a = infer.observe([{f"a{i}": i for i in range(MAX_PATHS - 1)}], 3, 10)
    b = infer.observe([{"b1": 1, "b2": 2, "a0": 3}], 3, 10)
    assert not a.truncated and not b.truncated
    a.merge(b)
    assert len(a.paths) == MAX_PATHS
    assert a.truncated
    assert a.paths[("a0",)].present == 2  # known paths still merge


def test_stats_presence_is_zero_when_nothing_was_sampled() -> None:
    stats = Stats(paths={("a",): PathStats(("a",))})
    assert stats.presence(("a",)) == 0.0


def test_core_paths_are_those_in_half_the_documents_when_keys_vary() -> None:
    docs = [{"id": i, "half": 1} if i % 2 else {"id": i, "rare": 1} for i in range(10)]
    docs[0]["once"] = 1
    stats = infer.observe(docs, max_depth=3, sample_size=100)
    assert stats.core_paths() == {"id", "half", "rare"}  # half: 5/10, rare: 5/10, once: 1/10


def test_core_paths_fall_back_to_all_paths_when_none_reaches_half() -> None:
    docs = [{f"k{i}": 1} for i in range(4)]
    stats = infer.observe(docs, max_depth=3, sample_size=100)
    assert stats.core_paths() == {"k0", "k1", "k2", "k3"}


def test_core_paths_use_escaped_path_keys_when_keys_hold_dots() -> None:
    stats = infer.observe([{"a.b": 1, "a": {"b": 2}}], max_depth=3, sample_size=10)
    assert stats.core_paths() == {"a\\.b", "a.b"}


def test_top_level_keys_count_distinct_first_keys_when_paths_are_nested() -> None:
    stats = infer.observe([{"a": {"x": 1, "y": 2}, "b": 1}], max_depth=3, sample_size=10)
    assert stats.top_level_keys == 2


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (set(), set(), 1.0),
        ({"a"}, set(), 0.0),
        ({"a"}, {"a"}, 1.0),
        ({"a", "b"}, {"b", "c"}, 1 / 3),
        ({"a", "b", "c", "d"}, {"a", "b", "c"}, 0.75),
    ],
)
def test_jaccard_is_shared_over_all_when_comparing_key_sets(
    a: set[str], b: set[str], expected: float
) -> None:
    assert jaccard(a, b) == pytest.approx(expected)
    assert jaccard(b, a) == pytest.approx(expected)


def test_flat_is_a_value_when_compared() -> None:
    assert flatten({"a": 1}, 3) == Flat({("a",): 1}, 1)
