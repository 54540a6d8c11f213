"""schemer.identifiers: SQL names from arbitrary document keys."""

from __future__ import annotations

import hashlib
import re

import pytest

from schemer.identifiers import (
    MAX_BYTES,
    SYSTEM_COLUMNS,
    column_names,
    identifier,
    normalise,
    stable_suffix,
)

WORD = re.compile(r"\w+")
SUFFIXED = re.compile(r"^(?P<readable>.*)_(?P<hash>[0-9a-f]{8})$", re.S)

# Keys a hostile or careless client may send: SQL, quotes, sizes, case, scripts, symbols.
HOSTILE_KEYS = [
    "a; DROP TABLE uploads; --",
    "'; DELETE FROM users WHERE '1'='1",
    "it's",
    'say "hi"',
    '"quoted"',
    "back\\slash",
    "\\",
    "x" * 10_000,
    "é" * 10_000,
    "Name",
    "name",
    "NAME!",
    "n.a.m.e",
    "select",
    "user",
    "table",
    "from",
    "1st",
    "123",
    "0",
    "",
    "!!!",
    "   ",
    "___",
    "名前",
    "prénom",
    "😀",
    "😀name😀",
    "\uff2e\uff41\uff4d\uff45",  # fullwidth letters: NFKC makes them ASCII
    "²nd",  # superscript two: NFKC makes it a digit
    "٣abc",  # Arabic-Indic digit three
    "tab\there",
    "new\nline",
    "bell\x07",
    "\x01\x02\x03",
    "del\x7f",
    "zero\u200bwidth",
    "rtl\u202eoverride",
    "_id",
    "_overflow",
    "document",
    "a__b",
    "ǅemal",
    "İstanbul",
    "किताब",
    "\ud800lonely surrogate",
    "𠀀" * 100,  # 4-byte letters
]


def _assert_valid(name: str) -> None:
    assert name, "a name is never empty"
    assert len(name.encode()) <= MAX_BYTES
    assert WORD.fullmatch(name), name
    assert not name[0].isdigit(), name
    assert not name.startswith("_"), name


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_identifier_is_a_valid_postgres_name_when_the_key_is_hostile(key: str) -> None:
    name = identifier(key)
    _assert_valid(name)
    assert identifier(key) == name  # stable


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_normalise_keeps_only_word_characters_when_given_any_key(key: str) -> None:
    text = normalise(key)
    assert text and WORD.fullmatch(text)
    assert not text[0].isdigit()
    assert not text.startswith("_") and not text.endswith("_")
    assert text == normalise(text)  # normalising twice changes nothing


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a; DROP TABLE uploads; --", "a_drop_table_uploads"),
        ("it's", "it_s"),
        ('say "hi"', "say_hi"),
        ("back\\slash", "back_slash"),
        ("Name", "name"),
        ("NAME!", "name"),
        ("First Name", "first_name"),
        ("select", "select"),
        ("user", "user"),
        ("table", "table"),
        ("1st", "k_1st"),
        ("123", "k_123"),
        ("²nd", "k_2nd"),
        ("", "key"),
        ("!!!", "key"),
        ("😀", "key"),
        ("😀name😀", "name"),
        ("名前", "名前"),
        ("prénom", "prénom"),
        ("PRÉNOM", "prénom"),
        ("\uff2e\uff41\uff4d\uff45", "name"),
        ("tab\there", "tab_here"),
        ("\x01\x02\x03", "key"),
        ("_id", "id"),
        ("a__b", "a__b"),
        ("a - - b", "a_b"),
    ],
)
def test_normalise_gives_the_readable_form_when_the_key_has_case_punctuation_or_script(
    key: str, expected: str
) -> None:
    assert normalise(key) == expected


@pytest.mark.parametrize("key", ["x" * 63, "x" * 64, "é" * 31, "é" * 32, "名" * 21, "名" * 22])
def test_identifier_cuts_only_beyond_63_bytes_when_the_key_is_near_the_limit(key: str) -> None:
    name = identifier(key)
    _assert_valid(name)
    if len(key.encode()) <= MAX_BYTES:
        assert name == key
    else:
        match = SUFFIXED.match(name)
        assert match is not None
        assert key.startswith(match["readable"])
        assert match["hash"] == hashlib.sha256(key.encode()).hexdigest()[:8]


@pytest.mark.parametrize("letter", ["x", "é", "名", "𠀀", "ab名", "é名𠀀"])
def test_identifier_cuts_on_a_character_boundary_when_characters_are_multibyte(
    letter: str,
) -> None:
    key = letter * 200
    name = identifier(key)
    readable = SUFFIXED.match(name)
    assert readable is not None
    head = readable["readable"]
    assert key.startswith(head)  # whole characters, none cut in half
    assert len(name.encode()) <= MAX_BYTES
    # As many whole characters as fit the 54 bytes left for the readable part.
    budget = MAX_BYTES - 9
    widest = max(len(ch.encode()) for ch in letter)
    assert budget - widest < len(head.encode()) <= budget


def test_identifier_keeps_prefix_and_distinguishes_keys_when_long_keys_share_a_prefix() -> None:
    a, b = "p" * 100 + "a", "p" * 100 + "b"
    assert identifier(a) != identifier(b)
    assert identifier(a)[:54] == identifier(b)[:54] == "p" * 54


def test_identifier_adds_stable_suffix_when_keys_differ_only_by_case() -> None:
    taken = {"name"}
    upper = identifier("Name", taken)
    shout = identifier("NAME!", taken)
    assert upper == "name" + stable_suffix("Name")
    assert shout == "name" + stable_suffix("NAME!")
    assert upper != shout
    assert upper not in taken and shout not in taken
    assert identifier("Name", taken) == upper  # deterministic


def test_identifier_is_plain_when_the_name_is_not_taken() -> None:
    assert identifier("Name", {"other"}) == "name"
    assert identifier("Name") == "name"


def test_stable_suffix_is_eight_hex_digits_of_sha256_when_given_any_key() -> None:
    assert stable_suffix("abc") == "_" + hashlib.sha256(b"abc").hexdigest()[:8]
    assert re.fullmatch(r"_[0-9a-f]{8}", stable_suffix("\ud800"))  # surrogates do not raise


def test_identifier_retries_with_another_suffix_when_the_suffixed_name_is_taken() -> None:
    first = identifier("Name", {"name"})
    second = identifier("Name", {"name", first})
    assert second not in {"name", first}
    assert second == "name" + stable_suffix("Name#2")
    _assert_valid(second)


def test_column_names_are_unique_and_never_system_columns_when_keys_collide() -> None:
    paths = [(key,) for key in HOSTILE_KEYS] + [
        ("Name",),
        ("name",),
        ("NAME",),
        ("name!",),
        ("document",),
        ("_id",),
        ("id",),
        ("upload_id",),
        ("address", "city"),
        ("address__city",),
        ("Address", "City"),
        ("a", "b", "c"),
        ("", ""),
        ("!!!", "???"),
    ]
    names = column_names(paths)
    assert len(names) == len(paths)
    assert len(set(names)) == len(names)
    assert not set(names) & SYSTEM_COLUMNS
    for name in names:
        _assert_valid(name)
    assert column_names(paths) == names  # stable


def test_column_names_keep_plain_names_for_earlier_paths_when_later_ones_collide() -> None:
    names = column_names([("name",), ("Name",), ("NAME!",)])
    assert names[0] == "name"
    assert names[1] == "name" + stable_suffix("Name")
    assert names[2] == "name" + stable_suffix("NAME!")


def test_column_names_join_nested_keys_with_two_underscores_when_paths_are_nested() -> None:
    assert column_names([("address", "city"), ("Address", "Zip Code")]) == [
        "address__city",
        "address__zip_code",
    ]


def test_column_names_suffix_the_later_path_when_a_flat_key_spells_a_nested_one() -> None:
    nested, flat = column_names([("address", "city"), ("address__city",)])
    assert nested == "address__city"
    assert flat == "address__city" + stable_suffix("address__city")
    # The nested path's suffix hashes the keys joined by \x1f, so it differs from the flat one.
    assert column_names([("address__city",), ("address", "city")])[1] == (
        "address__city" + stable_suffix("address\x1fcity")
    )


def test_column_names_avoid_taken_names_when_taken_is_given() -> None:
    names = column_names([("age",), ("email",)], taken=["age"])
    assert names == ["age" + stable_suffix("age"), "email"]


def test_column_names_suffix_a_key_named_document_when_it_meets_a_system_column() -> None:
    assert column_names([("document",)]) == ["document" + stable_suffix("document")]
    assert column_names([("_id",)]) == ["id"]  # leading underscores go: no clash


def test_column_names_stay_within_63_bytes_when_nested_paths_are_long() -> None:
    paths: list[tuple[str, ...]] = [
        ("é" * 40, "名" * 40, "x" * 40),
        ("é" * 40, "名" * 40, "y" * 40),
    ]
    names = column_names(paths)
    assert len(set(names)) == 2
    for name in names:
        _assert_valid(name)
        assert name.startswith("é")


def test_column_names_are_empty_when_no_paths_are_given() -> None:
    assert column_names([]) == []
