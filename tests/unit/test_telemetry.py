"""Pure pieces of observability: the default sampler, batch spans, the stage log's merging,
and the timeline's arithmetic and text."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

from common.stage_log import Delivery, StageLog, stage_outcome
from common.telemetry import _sampler, batch_span, span_context_of
from gateway.status import trace_url
from gateway.timeline import build_timeline, render_text


def test_the_default_sampler_is_parent_based_at_one_in_ten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    sampler = _sampler()
    assert sampler is not None
    assert sampler.get_description() == (
        "ParentBased{root:TraceIdRatioBased{0.1},remoteParentSampled:AlwaysOnSampler,"
        "remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
        "localParentNotSampled:AlwaysOffSampler}"
    )
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert "TraceIdRatioBased{0.25}" in (_sampler() or pytest.fail()).get_description()
    for bad in ("lots", "1.5", "-0.1"):
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", bad)
        with pytest.raises(SystemExit, match="OTEL_TRACES_SAMPLER_ARG"):
            _sampler()
    # A sampler named in the standard variable is the SDK's to build.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    assert _sampler() is None


def _context(sampled: bool) -> SpanContext:
    return SpanContext(
        uuid.uuid4().int >> 64 | 1,
        uuid.uuid4().int >> 65 | 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
    )


def test_a_batch_span_joins_the_first_recorded_caller_and_links_them_all() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    quiet, loud, other = _context(False), _context(True), _context(True)
    with batch_span(tracer, "embed image batch", [quiet, loud, other], input="image") as span:
        assert span.is_recording()
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is not None and finished.parent.span_id == loud.span_id
    assert finished.context.trace_id == loud.trace_id
    assert [link.context.span_id for link in finished.links] == [
        quiet.span_id,
        loud.span_id,
        other.span_id,
    ]
    assert finished.attributes == {"batch.size": 3, "input": "image"}
    # Nobody it serves is recorded: neither is it (no trace of its own).
    with batch_span(tracer, "save group commit", [_context(False)]) as span:
        assert not span.is_recording()
    assert len(exporter.get_finished_spans()) == 1


def test_stored_ids_make_a_link_only_when_they_are_ids() -> None:
    assert span_context_of("ab" * 16, "cd" * 8) is not None
    for trace_id, span_id in ((None, "cd" * 8), ("ab" * 16, None), ("zz", "cd" * 8),
                              ("0" * 32, "cd" * 8)):  # fmt: skip
        assert span_context_of(trace_id, span_id) is None


def test_the_stage_outcome_of_each_delivery_outcome() -> None:
    assert stage_outcome("ok") == "ok"
    assert stage_outcome("dead_lettered") == "failed"
    for waiting in ("retried", "requeued", "held", "failed"):
        assert stage_outcome(waiting) == "retrying"


def test_the_stage_log_merges_a_messages_reports_until_it_flushes() -> None:
    log = StageLog(pool=None)  # flush is never called
    delivery = Delivery(stage="embed", message_id=uuid.uuid4(), service="embedder",
                        queue="q", attempt=1, upload_ids=[uuid.uuid4()])  # fmt: skip
    log.started(delivery, 100.0)
    log.finished(delivery, 100.0, 100.5, "retried", "Retryable: later")
    second = Delivery(**{**delivery.__dict__, "attempt": 2})
    log.started(second, 101.0)
    log.finished(second, 101.0, 101.25, "ok", None)
    (row,) = log._rows.values()
    assert row.attempts == 2 and row.outcome == "ok"
    assert row.work_seconds == pytest.approx(0.75)
    assert row.started_at.timestamp() == 100.0 and row.last_started_at.timestamp() == 101.0
    assert row.finished_at is not None and row.finished_at.timestamp() == 101.25
    assert row.error == "Retryable: later"
    assert row.upload_list == str(delivery.upload_ids[0])
    # A full buffer drops new messages rather than growing without bound.
    tiny = StageLog(pool=None, max_rows=1)
    tiny.started(delivery, 1.0)
    tiny.started(Delivery(**{**delivery.__dict__, "message_id": uuid.uuid4()}), 1.0)
    assert len(tiny._rows) == 1


def test_a_trace_link_only_for_a_recorded_trace() -> None:
    template = "https://jaeger.example/trace/{trace_id}"
    assert trace_url(template, "ab" * 16, True) == "https://jaeger.example/trace/" + "ab" * 16
    assert trace_url(template, "ab" * 16, None) == "https://jaeger.example/trace/" + "ab" * 16
    assert trace_url(template, "ab" * 16, False) is None
    assert trace_url(None, "ab" * 16, True) is None
    assert trace_url(template, None, True) is None


def test_the_timeline_splits_wait_from_work_and_lists_what_is_pending() -> None:
    t0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    job, upload, content = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    uploads: list[dict[str, Any]] = [
        {"job_id": job, "received_at": at(0), "created_at": at(0.05), "trace_id": "ab" * 16,
         "trace_sampled": True, "upload_id": upload, "content_id": content, "kind": "image",
         "stage": "embedded", "error": None, "filename": "a.jpg", "first_job_id": job},
    ]  # fmt: skip
    embed = {"stage": "embed", "service": "embedder", "queue": "embedder.media-ingested",
             "job_id": job, "content_id": content, "upload_ids": [], "queued_at": at(0.05),
             "published_at": at(0.10), "started_at": at(0.30), "last_started_at": at(0.30),
             "finished_at": at(0.50), "attempts": 1, "work_seconds": 0.2, "outcome": "ok",
             "error": None, "trace_id": "ab" * 16}  # fmt: skip
    running = {**embed, "stage": "cluster", "service": "clusterer", "queued_at": at(0.5),
               "published_at": at(0.5), "started_at": at(0.6), "last_started_at": at(0.6),
               "finished_at": None, "work_seconds": 0.0, "outcome": "running"}  # fmt: skip
    timeline = build_timeline(
        uploads, [embed, running], see_all=True, trace_template=None, now=at(1.0)
    )
    stages = {s["stage"]: s for s in timeline["uploads"][0]["stages"]}
    assert list(stages) == ["ingest", "embed", "cluster", "analyze"]
    assert stages["ingest"]["work_seconds"] == pytest.approx(0.05)
    assert stages["embed"]["wait_seconds"] == pytest.approx(0.25)  # 0.45 queued, 0.2 work
    assert stages["embed"]["outbox_wait_seconds"] == pytest.approx(0.05)
    assert stages["cluster"]["wait_seconds"] == pytest.approx(0.1)  # queued until it started
    assert stages["analyze"] == {"stage": "analyze", "outcome": "pending"}
    assert timeline["uploads"][0]["elapsed_seconds"] == pytest.approx(0.5)
    text = render_text(timeline)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[4:]}
    assert rows["embed"] == ["embed", "embedder", "ok", "1", "+0.300s", "+0.500s", "0.250s",
                             "0.200s"]  # fmt: skip
    assert rows["cluster"][2:5] == ["running", "1", "+0.600s"]
    assert rows["analyze"][:3] == ["analyze", "-", "pending"]
    # Another job's processing of the same content: shared, its trace hidden from a bound key.
    other = {**embed, "job_id": uuid.uuid4()}
    hidden = build_timeline(uploads, [other], see_all=False, trace_template=None, now=at(1))
    shared = hidden["uploads"][0]["stages"][1]
    assert shared["shared"] is True and shared["trace_id"] is None
    assert "embed (shared)" in render_text(hidden)
