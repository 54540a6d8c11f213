"""One ingest request is one trace through every service it touches, as the spans arrive at an
OTLP/HTTP receiver; and the timeline endpoint tells the same story from the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.observability.conftest import Workload
from tests.observability.harness import Span, System, get_json, wait_until

SERVICE_ROOT = "POST /api/v1/ingest"


def consume_spans(spans: list[Span], stage: str) -> list[Span]:
    return [s for s in spans if s.attributes.get("mammothbox.stage") == stage]


def one(spans: list[Span], stage: str) -> Span:
    found = consume_spans(spans, stage)
    assert len(found) == 1, (stage, [s.name for s in found])
    return found[0]


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_id is not None:
        parent = by_id.get(span.parent_id)
        assert parent is not None, f"{span.name} ({span.service}): parent not in the trace"
        chain.append(parent)
        span = parent
    return chain


async def status_of(system: System, job: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        status: dict[str, Any] = await get_json(
            session, f"{system.base}/api/v1/ingest/{job}/status"
        )
        return status


async def settled_trace(system: System, job: str, stages: set[str]) -> tuple[str, list[Span]]:
    """The job's trace once a consume span of every stage arrived (and a flush more)."""
    trace_id = (await status_of(system, job))["trace_id"]

    def arrived() -> list[Span] | None:
        spans = system.receiver.trace(trace_id)
        seen = {s.attributes.get("mammothbox.stage") for s in spans}
        return spans if stages <= seen else None

    await wait_until(arrived, timeout=30, what=f"spans of {stages} in trace {trace_id}")
    # Parents end after their children: give the exporters one more batch (200 ms) or two.
    import asyncio

    await asyncio.sleep(1.0)
    return trace_id, system.receiver.trace(trace_id)


async def test_an_image_is_one_trace_from_the_request_through_every_service(
    system: System, workload: Workload
) -> None:
    trace_id, spans = await settled_trace(
        system, workload.image_job, {"embed", "cluster", "analyze"}
    )
    status = await status_of(system, workload.image_job)
    assert status["trace_sampled"] is True
    by_id = {s.span_id: s for s in spans}
    assert {s.service for s in spans} >= {"gateway", "embedder", "clusterer", "analyzer"}

    roots = [s for s in spans if s.parent_id is None]
    assert [(r.service, r.name) for r in roots] == [("gateway", SERVICE_ROOT)]
    root = roots[0]
    assert root.attributes["mammothbox.job_id"] == workload.image_job
    assert root.attributes["mammothbox.upload_ids"] == [workload.image_upload]
    for span in spans:  # one tree: every span reaches the request's span
        assert span is root or ancestors(span, by_id)[-1] is root

    embed, cluster, analyze = (one(spans, s) for s in ("embed", "cluster", "analyze"))
    # The order of the pipeline: the gateway publishes, the embedder consumes, and the
    # clusterer and the analyzer consume what the embedder published.
    publish = next(s for s in spans if s.name == "publish media.ingested.v1")
    assert publish in ancestors(embed, by_id)
    assert embed in ancestors(cluster, by_id) and embed in ancestors(analyze, by_id)
    for span in (embed, cluster, analyze):
        assert span.attributes["mammothbox.job_id"] == workload.image_job
        assert span.attributes["mammothbox.outcome"] == "ok"
        assert span.attributes["mammothbox.content_id"]
    assert cluster.attributes["mammothbox.model_id"] == analyze.attributes["mammothbox.model_id"]

    # The VLM call, inside the analyzer's handling of the event.
    vlm = [s for s in spans if s.name == "vlm generate_content"]
    assert vlm and all(analyze in ancestors(s, by_id) for s in vlm)
    assert vlm[0].attributes["gen_ai.request.model"] == "gemini-test"

    # Database statements of every service, each under that service's work.
    for service in ("gateway", "embedder", "clusterer", "analyzer"):
        statements = [s for s in spans if s.service == service and s.attributes.get("db.system")]
        assert statements, f"no database span from the {service}"

    # The micro-batch that embedded the image and the group commit that saved it are spans of
    # their own, linking the handling they served.
    batch = next(s for s in spans if s.name == "embed image batch")
    assert (trace_id, embed.span_id) in batch.links
    save = next(s for s in spans if s.name == "save group commit")
    assert (trace_id, embed.span_id) in save.links
    assert next(s for s in spans if s.name == "ingest group commit").links == (
        (trace_id, root.span_id),
    )


async def test_a_json_document_is_one_trace_through_the_gateway_and_the_schemer(
    system: System, workload: Workload
) -> None:
    _, spans = await settled_trace(system, workload.json_job, {"store"})
    by_id = {s.span_id: s for s in spans}
    others = [(s.service, s.name, s.parent_id and by_id.get(s.parent_id, s).name) for s in spans
              if s.service not in ("gateway", "schemer")]  # fmt: skip
    assert {s.service for s in spans} >= {"gateway", "schemer"}
    # Only the gateway and the schemer work on it. The clusterer runs an outbox relay over
    # the same table, and either relay may be the one that publishes the event: its publish
    # (and the AMQP send under it) is then the clusterer's, in this trace, as it should be.
    relayed = [s for s in spans if s.service == "clusterer"]
    assert all(
        s.name == "publish json.ingested.v2" or s.name.endswith("json.ingested.v2 send")
        for s in relayed
    ) and {s.service for s in spans} <= {"gateway", "schemer", "clusterer"}, others
    root = next(s for s in spans if s.parent_id is None)
    assert root.name == SERVICE_ROOT
    store = one(spans, "store")
    assert root in ancestors(store, by_id)
    status = await status_of(system, workload.json_job)
    uploads = [u["system_id"] for u in status["uploads"]]
    assert store.attributes["mammothbox.upload_ids"] == uploads
    assert root.attributes["mammothbox.upload_ids"] == uploads
    assert any(s.attributes.get("db.system") and s.service == "schemer" for s in spans)


async def test_an_upload_of_stored_content_links_to_the_trace_that_processed_it(
    system: System, workload: Workload
) -> None:
    first_trace, first_spans = await settled_trace(system, workload.image_job, {"embed"})
    trace_id, spans = await settled_trace(system, workload.again_job, {"link"})
    assert trace_id != first_trace
    link = one(spans, "link")
    assert link.attributes["mammothbox.upload_id"] == workload.again_upload
    first_root = next(s for s in first_spans if s.parent_id is None)
    assert (first_trace, first_root.span_id) in link.links
    # Its content was not embedded again: no embedder work in this trace.
    assert not consume_spans(spans, "embed")


async def test_every_request_has_its_own_trace(system: System, workload: Workload) -> None:
    jobs = (workload.image_job, workload.json_job, workload.again_job, workload.broken_job)
    traces = [(await status_of(system, job))["trace_id"] for job in jobs]
    assert len(set(traces)) == len(traces) and all(t and len(t) == 32 for t in traces)


async def test_a_failed_stage_is_an_error_span_and_a_failed_stage_in_the_timeline(
    system: System, workload: Workload
) -> None:
    _, spans = await settled_trace(system, workload.broken_job, {"embed"})
    embed = one(spans, "embed")
    assert embed.status == 2  # STATUS_CODE_ERROR
    assert embed.attributes["mammothbox.outcome"] == "dead_lettered"
    async with aiohttp.ClientSession() as session:
        timeline = await get_json(
            session, f"{system.base}/api/v1/ingest/{workload.broken_job}/timeline"
        )
    stages = {s["stage"]: s for s in timeline["uploads"][0]["stages"]}
    assert stages["embed"]["outcome"] == "failed"
    assert "cannot decode image" in stages["embed"]["error"]
    assert stages["cluster"]["outcome"] == stages["analyze"]["outcome"] == "skipped"


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize("job_name", ["image_job", "json_job", "again_job"])
async def test_the_timeline_matches_the_spans(
    system: System, workload: Workload, job_name: str
) -> None:
    job = getattr(workload, job_name)
    async with aiohttp.ClientSession() as session:
        timeline = await get_json(session, f"{system.base}/api/v1/ingest/{job}/timeline")
        text_url = f"{system.base}/api/v1/ingest/{job}/timeline?format=text"
        async with session.get(text_url) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    assert timeline["job_id"] == job and timeline["trace_sampled"] is True
    assert timeline["trace_id"] in text
    expected = {"image_job": {"embed", "cluster", "analyze"}, "json_job": {"store"},
                "again_job": {"link"}}[job_name]  # fmt: skip
    _, spans = await settled_trace(system, job, expected)
    own = [
        s
        for upload in timeline["uploads"]
        for s in upload["stages"]
        if s["stage"] != "ingest" and not s["shared"]
    ]
    assert {s["stage"] for s in own} >= expected
    for stage in own:
        assert stage["outcome"] == "ok", stage
        assert stage["trace_id"] == timeline["trace_id"]
        # One consume span per delivery: a stage retried (the analysis can overtake the
        # filing, and the naming waits for it) has one per attempt; the last one ended it.
        tries = sorted(
            consume_spans(spans, stage["stage"]), key=lambda s: s.attributes["mammothbox.attempt"]
        )
        assert [t.attributes["mammothbox.attempt"] for t in tries] == list(
            range(1, stage["attempts"] + 1)
        )
        assert tries[-1].attributes["mammothbox.outcome"] == "ok"
        if stage["stage"] in expected:
            assert stage["attempts"] == 1, stage
        span = tries[0]
        assert span.service == stage["service"]
        # The stage log's times are the consumer's: inside its span (10 ms for clocks read
        # a few statements apart), and its work is the span's length or less.
        start, end = span.start_ns / 1e9, tries[-1].end_ns / 1e9
        assert start - 0.01 <= _at(stage["started_at"]) <= span.end_ns / 1e9
        assert tries[-1].start_ns / 1e9 <= _at(stage["finished_at"]) <= end + 0.01
        assert stage["work_seconds"] <= sum((t.end_ns - t.start_ns) / 1e9 for t in tries) + 0.01
        assert _at(stage["queued_at"]) <= _at(stage["published_at"]) <= _at(stage["started_at"])
        assert stage["wait_seconds"] >= 0
        assert f"  {stage['stage']}  " in text
    ingest = timeline["uploads"][0]["stages"][0]
    root = next(s for s in spans if s.parent_id is None)
    assert ingest["stage"] == "ingest" and ingest["service"] == "gateway"
    assert root.start_ns / 1e9 - 0.01 <= _at(ingest["started_at"]) <= root.end_ns / 1e9
    if job_name == "again_job":  # the content's stages, from the first upload's processing
        shared = {s["stage"] for s in timeline["uploads"][0]["stages"] if s.get("shared")}
        assert shared >= {"embed", "cluster"}


async def test_no_trace_starts_at_background_polling_or_a_probe(
    system: System, workload: Workload
) -> None:
    # The run, the probes supervise.py waited on and Prometheus' scrapes are all behind us.
    roots = [s for s in system.receiver.all() if s.parent_id is None]
    assert roots
    for root in roots:
        assert not root.attributes.get("db.system"), f"a trace starts at {root.name}"
        assert root.name.split()[-1] not in ("/live", "/ready", "/health", "/metrics"), root.name


@pytest.mark.parametrize(("root_name", "batch"), [("GET /api/v1/search", "embed text batch"),
                                                  ("POST /api/v1/search", "embed image batch")])  # fmt: skip
async def test_a_search_is_one_trace_through_the_embedders_rpc(
    system: System, workload: Workload, root_name: str, batch: str
) -> None:
    roots = [s for s in system.receiver.all() if s.parent_id is None and s.name == root_name]
    assert roots, f"no {root_name} trace"

    def with_embedder(root: Span) -> list[Span] | None:
        spans = system.receiver.trace(root.trace_id)
        return spans if any(s.service == "embedder" and s.name == batch for s in spans) else None

    found = [spans for root in roots if (spans := with_embedder(root))]
    assert found, f"no {root_name} trace reached the embedder's {batch}"
    spans = found[0]
    by_id = {s.span_id: s for s in spans}
    root = next(s for s in spans if s.parent_id is None)
    embedded = next(s for s in spans if s.name == batch)
    assert ancestors(embedded, by_id)[-1] is root  # the RPC's handling is inside the search
