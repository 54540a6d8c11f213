"""The analyzer's pure parts: retry delays, backoff, the breaker, the answer's schema, images."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image
from pydantic import ValidationError

from analyzer.images import for_vlm
from analyzer.resilience import Breaker, backoff, server_retry_delay
from analyzer.schema import VlmAnalysis
from analyzer.settings import AnalyzerSettings


def test_server_retry_delay_reads_retryinfo_or_retry_after_when_given() -> None:
    body = {"error": {"code": 429, "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"},
    ]}}  # fmt: skip
    assert server_retry_delay(body) == 1.5
    assert server_retry_delay({"error": {"details": []}}, "7") == 7.0
    assert (
        server_retry_delay({"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": "soon"}]}})
        is None
    )
    junk: object
    for junk in (None, [], "text", {"error": "nope"}, {"error": {"details": "x"}}):
        assert server_retry_delay(junk, "not a number") is None


def test_backoff_grows_and_stays_under_the_cap_when_jittered() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        delay = backoff(attempt, 0.5, 30.0, rng)
        assert 0 <= delay <= min(30.0, 0.5 * 2**attempt)
    assert max(backoff(10, 0.5, 30.0, rng) for _ in range(200)) > 20  # reaches toward the cap


def test_breaker_opens_half_opens_and_closes_when_calls_fail_then_succeed() -> None:
    now = [0.0]
    breaker = Breaker(failures=3, reset_s=10.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.failure()  # the trial failed: open again for another reset_s
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_vlm_answer_is_cleaned_when_it_follows_the_schema() -> None:
    answer = VlmAnalysis.model_validate_json(
        '{"tags": ["Cat", "cat", " sofa ", ""] , "primary_category": " pets ",'
        ' "description": "A cat.", "suggested_cluster_name": "Cats  at home", "extra": 1}'
    )
    assert answer.tags == ["cat", "sofa"]
    assert answer.primary_category == "pets" and answer.suggested_cluster_name == "Cats at home"
    many = VlmAnalysis(
        tags=[f"t{i}" for i in range(40)],
        primary_category="x",
        description="",
        suggested_cluster_name="y",
    )
    assert len(many.tags) == 15
    stored = answer.stored("gemini-x")
    assert stored["source"] == "vlm" and stored["model"] == "gemini-x"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[]",
        '{"tags": "cat", "primary_category": "x", "description": "", "suggested_cluster_name": "y"}',
        '{"tags": [], "primary_category": "  ", "description": "", "suggested_cluster_name": "y"}',
        '{"tags": [], "primary_category": "x", "description": ""}',
    ],
)
def test_vlm_answer_is_refused_when_it_breaks_the_schema(text: str) -> None:
    with pytest.raises(ValidationError):
        VlmAnalysis.model_validate_json(text)


def test_image_for_vlm_is_oriented_and_at_most_the_limit_when_large() -> None:
    image = Image.new("RGB", (3000, 1000), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    out = Image.open(io.BytesIO(for_vlm(buffer.getvalue(), 1024)))
    assert out.format == "JPEG" and out.size == (341, 1024)
    small = io.BytesIO()
    Image.new("RGB", (100, 50)).save(small, "PNG")
    assert Image.open(io.BytesIO(for_vlm(small.getvalue(), 1024))).size == (100, 50)
    with pytest.raises((OSError, ValueError)):
        for_vlm(b"\x89PNG\r\n\x1a\n truncated", 1024)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_image_for_vlm_reads_heic_and_avif_upright(fmt: str) -> None:
    # A phone's sideways photo: HEIC keeps the turn in its rotation box, which is applied.
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (300, 100), (10, 10, 200)).save(buffer, fmt, exif=exif.tobytes())
    out = Image.open(io.BytesIO(for_vlm(buffer.getvalue(), 1024)))
    assert out.format == "JPEG" and out.size == (100, 300)


def test_settings_say_when_gemini_may_be_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    assert not AnalyzerSettings().vlm_usable
    monkeypatch.setenv("GEMINI_API_KEY", "   ")
    assert not AnalyzerSettings().vlm_usable
    monkeypatch.setenv("GEMINI_API_KEY", "sekrit-key-123")
    assert AnalyzerSettings().vlm_usable
    assert "sekrit-key-123" not in repr(AnalyzerSettings())  # the key is a secret
    monkeypatch.setenv("VLM_ENABLED", "false")
    assert not AnalyzerSettings().vlm_usable
    monkeypatch.setenv("VLM_TIMEOUT", "0")
    with pytest.raises(ValidationError):
        AnalyzerSettings()
