"""Pure decisions of the gateway: sniffing, JSON documents, fields, status."""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from common.bus import BusUnavailable
from common.rpc import RpcTimeout
from gateway.errors import ApiError, unavailable
from gateway.jsonbody import nested_deeper_than, nul_escape_at, parse_json
from gateway.settings import GatewaySettings
from gateway.status import job_status, upload_status
from gateway.upload_rules import (
    check_idempotency_key,
    check_owner,
    clean_filename,
    fingerprint,
    json_documents,
    parse_disposition,
    sniff,
    text_field,
)
from tests.conftest import make_jpeg, make_png

SETTINGS = GatewaySettings(max_json_items=3)


@pytest.mark.parametrize(
    ("head", "kind", "mime"),
    [
        (make_jpeg(1)[:512], "image", "image/jpeg"),
        (make_png(1)[:512], "image", "image/png"),
        (b"GIF89a" + b"\x00" * 20, "image", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20, "image", "image/webp"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 20, "video", "video/mp4"),
        (
            b"\x1aE\xdf\xa3\x9fB\x86\x81\x01B\xf7\x81\x01B\xf2\x81\x04B\xf3\x81\x08B\x82\x84webm",
            "video",
            "video/webm",
        ),
        (b'  \n{"a": 1}', "json", "application/json"),
        (b"\xef\xbb\xbf[1]", "json", "application/json"),
    ],
)
def test_sniff_finds_kind_from_bytes_when_supported(head: bytes, kind: str, mime: str) -> None:
    found = sniff(head)
    assert found is not None
    assert (found.kind, found.mime_type) == (kind, mime)


@pytest.mark.parametrize(
    "head", [b"plain text", b"%PDF-1.7\n", b"PK\x03\x04" + b"\x00" * 30, b"\x7fELF\x02", b""]
)
def test_sniff_refuses_when_type_is_unsupported(head: bytes) -> None:
    assert sniff(head) is None


def test_parse_json_names_line_and_column_when_invalid() -> None:
    with pytest.raises(ApiError) as error:
        parse_json(b'{\n  "a": tru\n}', "body", 64)
    assert error.value.status == 400
    assert error.value.details["line"] == 2
    assert "line 2" in error.value.error


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'[[], [[]], {"x": [[{}]]}]', 5),
        (b'["[[[[", "]", {"k[{": "\\\\"}]', 2),  # brackets in strings do not count
        (b'["\\\\\\"[[[[[["]', 1),  # an escaped backslash, then an escaped quote
        (b'[["\\\\"], [[["\\\\\\\\"]]]]', 4),
    ],
)
def test_nested_deeper_than_counts_arrays_and_objects_when_strings_hold_brackets(
    text: bytes, depth: int
) -> None:
    orjson.loads(text)  # valid JSON
    assert not nested_deeper_than(text, depth)
    assert depth == 0 or nested_deeper_than(text, depth - 1)


def test_nested_deeper_than_reads_documents_larger_than_one_chunk_when_scanning() -> None:
    text = b"[" + b",".join([b'{"s": "[[[[[[[[[[", "a": [[1]]}'] * 100_000) + b"]"
    assert not nested_deeper_than(text, 4)
    assert nested_deeper_than(text[:-1] + b',[[[[["x"]]]]]]', 5)


def test_parse_json_refuses_a_nul_and_keeps_an_escaped_backslash_when_followed_by_u0000() -> None:
    assert parse_json(b'{"a\\\\u0000": "\\\\u0000"}', "body", 64) == {"a\\u0000": "\\u0000"}
    for text in (b'{"a": "\\u0000"}', b'{"\\u0000": 1}', b'["\\\\\\u0000"]'):
        with pytest.raises(ApiError) as error:
            parse_json(text, "body", 64)
        assert error.value.status == 400 and "NUL" in error.value.error
        assert text[error.value.details["position"]] == ord("\\")
    assert nul_escape_at(b'"u0000"') is None


def test_parse_json_names_the_limit_when_nested_deeper() -> None:
    assert parse_json(b"[" * 5 + b"]" * 5, "body", 5) == [[[[[]]]]]
    with pytest.raises(ApiError) as error:
        parse_json(b"[" * 6 + b"]" * 6, "body", 5)
    assert error.value.status == 400 and "more than 5 levels" in error.value.error
    assert error.value.details == {"limit": 5}


def test_text_field_refuses_nul_and_invalid_utf8_when_decoding() -> None:
    assert text_field("ünï".encode(), "comments") == "ünï"
    for data in (b"a\x00b", b"\xff"):
        with pytest.raises(ApiError) as error:
            text_field(data, "comments")
        assert error.value.status == 400 and "'comments'" in error.value.error


@pytest.mark.parametrize(
    ("error", "answer"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), "database unavailable"),
        (TimeoutError(), "database unavailable"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), "database"),
        (asyncpg.AdminShutdownError("terminating connection"), "database"),
        (asyncpg.CrashShutdownError("crash"), "database"),
        (asyncpg.TooManyConnectionsError("too many clients"), "database"),
        (asyncpg.ConnectionDoesNotExistError("closed in the middle"), "database"),
        (asyncpg.ConnectionFailureError("08006"), "database"),
        (asyncpg.InterfaceError("pool is closing"), "database"),
        (BusUnavailable("bus not connected"), "message bus"),
        (RpcTimeout(), None),
        (asyncpg.exceptions._base.DataError("invalid input for query argument"), None),
        (asyncpg.UniqueViolationError("duplicate key"), None),
        (asyncpg.QueryCanceledError("canceling statement"), None),
        (ValueError("a bug"), None),
    ],
)
def test_unavailable_names_what_is_down_when_the_error_class_says_so(
    error: BaseException, answer: str | None
) -> None:
    found = unavailable(error)
    assert (found is None) if answer is None else (found is not None and answer in found)


def test_json_documents_split_arrays_and_bound_their_length() -> None:
    docs = json_documents([{"a": 1}, {"b": 2}], "body", SETTINGS)
    assert docs == [b'{"a":1}', b'{"b":2}']
    assert json_documents({"a": 1}, "body", SETTINGS) == [b'{"a":1}']
    with pytest.raises(ApiError) as error:
        json_documents([{}] * 4, "body", SETTINGS)
    assert error.value.status == 413
    for bad in ([], "x", [1], [{"a": 1}, None]):
        with pytest.raises(ApiError):
            json_documents(bad, "body", SETTINGS)


def test_fields_are_checked_when_given() -> None:
    assert check_owner(None) == "anonymous"
    assert check_owner(" alice@example.com ") == "alice@example.com"
    for bad in ("a b", "x" * 129, "../etc", "ünïcode"):
        with pytest.raises(ApiError):
            check_owner(bad)
    assert check_idempotency_key("") is None
    with pytest.raises(ApiError):
        check_idempotency_key("tab\tkey")
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\Users\\x\\cat.jpg") == "cat.jpg"
    assert clean_filename("bell\x07.jpg") == "bell.jpg"
    assert clean_filename("") is None


def test_fingerprint_differs_when_any_part_differs() -> None:
    base = fingerprint("o", None, [("a.jpg", "1" * 64)])
    assert base == fingerprint("o", None, [("a.jpg", "1" * 64)])
    assert base != fingerprint("p", None, [("a.jpg", "1" * 64)])
    assert base != fingerprint("o", "c", [("a.jpg", "1" * 64)])
    assert base != fingerprint("o", None, [("b.jpg", "1" * 64)])
    assert base != fingerprint("o", None, [("a.jpg", "2" * 64)])


@pytest.mark.parametrize(
    ("kind", "stage", "expected"),
    [
        ("image", "ingested", "queued"),
        ("image", "embedded", "processing"),
        ("image", "clustered", "done"),
        ("video", "clustered", "done"),
        ("json", "stored", "done"),
        ("json", "failed", "failed"),
    ],
)
def test_upload_status_follows_stage(kind: str, stage: str, expected: str) -> None:
    assert upload_status(kind, stage) == expected


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["queued", "queued"], "queued"),
        (["queued", "processing"], "processing"),
        (["queued", "done"], "processing"),
        (["done", "done"], "done"),
        (["failed"], "failed"),
        (["done", "failed"], "partial"),
        (["failed", "processing"], "processing"),
    ],
)
def test_job_status_derives_from_upload_statuses(statuses: list[str], expected: str) -> None:
    assert job_status(statuses) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('form-data; name="files[]"; filename="a.jpg"', ("files[]", "a.jpg")),
        ("form-data; name=owner", ("owner", None)),
        ('form-data; name="f"; filename="say \\"hi\\"; ok.jpg"', ("f", 'say "hi"; ok.jpg')),
        (
            'form-data; name="f"; filename="x.jpg"; filename*=UTF-8\'\'%C3%A9t%C3%A9.jpg',
            ("f", "été.jpg"),
        ),
        ("form-data; NAME=\"f\"; filename*=bogus''x.jpg", ("f", "x.jpg")),
        ("form-data", (None, None)),
        ("", (None, None)),
        ('form-data; name="f"; filename=""', ("f", "")),
    ],
)
def test_parse_disposition_reads_name_and_filename_when_given(
    header: str, expected: tuple[str | None, str | None]
) -> None:
    assert parse_disposition(header) == expected
