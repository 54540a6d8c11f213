"""Every service's /metrics after a small run: the names the guide uses, bounded labels, series
that exist before their first event, output promtool accepts, and a real Prometheus that
scrapes it all and answers every dashboard panel's query."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import OUTCOMES
from common.topology import queue_specs
from tests.monitoring.prom import dashboard_queries, query
from tests.observability.conftest import Workload
from tests.observability.harness import SERVICES, System, wait_until

STAGES = {spec.stage for spec in queue_specs()} | {"dead_letter"}
CONSUMERS = {"gateway", "embedder", "clusterer", "analyzer", "schemer"}
# Every service: what it handled, how long that took, its database time.
COMMON = {
    "jobs_processed_total": {"service", "outcome"},
    "job_processing_duration_seconds": {"service", "stage"},
    "db_query_duration_seconds": {"operation"},
    "process_resident_memory_bytes": set(),
}
EXPECTED: dict[str, dict[str, set[str]]] = {
    "gateway": {
        **COMMON,
        "ingest_latency_seconds": set(),
        "search_latency_seconds": {"query"},
        "queue_depth": {"queue"},
        "dlq_depth": {"queue"},
        "outbox_lag_seconds": set(),
        "outbox_pending": set(),
        "oldest_unfinished_seconds": {"stage"},
        "storage_free_bytes": set(),
        "storage_total_bytes": set(),
    },
    "embedder": {
        **COMMON,
        "embedder_batch_size": {"input"},
        "embedder_inference_seconds": {"input"},
        "embedder_decoder_restarts_total": {"reason"},
    },
    "clusterer": {**COMMON, "cluster_assignment_seconds": {"outcome"}, "outbox_lag_seconds": set()},
    "analyzer": {
        **COMMON,
        "vlm_requests_total": {"outcome"},
        "vlm_latency_seconds": set(),
        "vlm_breaker_open": set(),
        "vlm_rate_limit_wait_seconds": set(),
    },
    "schemer": {**COMMON, "schemer_batch_seconds": set()},
}
# Label values come from fixed sets, never from ids or input.
BOUNDED = {
    "outcome": set(OUTCOMES)
    | {"ok", "retry", "timeout", "rate_limited", "unauthorized", "invalid", "server_error",
       "fallback", "joined", "created", "duplicate", "stored", "present"},
    "backend": {"filesystem", "s3"},
    "stage": STAGES | {"ingested", "embedded"},
    "service": CONSUMERS,
    "query": {"text", "image", "like"},
    "input": {"image", "text"},
    "reason": {"crash", "timeout", "cancel", "idle_death", "buffer_full", "write_failed",
               "full", "unroutable", "channel", "nack", "returned", "refused"},
    "operation": {"select", "insert", "update", "delete", "with", "begin", "commit",
                  "rollback", "other", "ingest_batch", "embedder_save"},
}  # fmt: skip


async def scrape(system: System, service: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(system.url(service, "/metrics")) as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


Samples = dict[str, list[tuple[str, dict[str, str], float]]]


def samples(text: str) -> Samples:
    """Samples by family name: (sample name, labels, value)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        found.setdefault(family.name, []).extend(
            (s.name, s.labels, s.value) for s in family.samples
        )
    return found


def value(found: Samples, family: str, sample: str | None = None, **labels: str) -> float:
    """The sum of a family's samples of one name (the family's, or e.g. its `_count`) with
    these labels."""
    name = sample or family
    return float(
        sum(
            v
            for sample_name, lbl, v in found.get(family, [])
            if sample_name == name and all(lbl.get(k) == want for k, want in labels.items())
        )
    )


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_exposes_the_metrics_the_guide_names(
    system: System, workload: Workload, service: str
) -> None:
    text = await scrape(system, service)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, labels in EXPECTED[service].items():
        family = families.get(name.removesuffix("_total"))
        assert family is not None, f"{service} has no {name}"
        assert family.samples, f"{service}'s {name} has no series"
        for sample in family.samples:
            names = set(sample.labels) - {"le", "quantile"}
            assert names == labels, (service, name, sample.labels)
    for family in families.values():
        for sample in family.samples:
            for label, allowed in BOUNDED.items():
                if label in sample.labels and family.name != "python_info":
                    assert sample.labels[label] in allowed, (service, family.name, sample.labels)


async def test_series_a_dashboard_reads_exist_at_zero_before_their_first_event(
    system: System, workload: Workload
) -> None:
    analyzer = {f.name: f for f in text_string_to_metric_families(await scrape(system, "analyzer"))}
    outcomes = {s.labels["outcome"] for s in analyzer["vlm_requests"].samples}
    assert outcomes >= {"ok", "timeout", "rate_limited", "server_error", "fallback"}
    for service in SERVICES:
        text = await scrape(system, service)
        for family in text_string_to_metric_families(text):
            if family.name != "jobs_processed":
                continue
            seen = {(s.labels["service"], s.labels["outcome"]) for s in family.samples}
            assert {(service, o) for o in OUTCOMES} <= seen, service


async def test_the_run_shows_in_the_numbers(system: System, workload: Workload) -> None:
    gateway = samples(await scrape(system, "gateway"))
    assert value(gateway, "ingest_latency_seconds", "ingest_latency_seconds_count") >= 4
    assert (
        value(gateway, "search_latency_seconds", "search_latency_seconds_count", query="text") >= 2
    )
    assert (
        value(gateway, "search_latency_seconds", "search_latency_seconds_count", query="image") >= 1
    )
    queues = {lbl["queue"] for _, lbl, _ in gateway["queue_depth"]}
    prefix = system.env["BUS_QUEUE_PREFIX"]
    assert queues == {spec.name for spec in queue_specs(prefix)}
    assert value(gateway, "jobs_processed", "jobs_processed_total", outcome="ok") >= 1  # the DLQ
    embedder = samples(await scrape(system, "embedder"))
    assert value(embedder, "jobs_processed", "jobs_processed_total", outcome="ok") >= 1
    assert value(embedder, "jobs_processed", "jobs_processed_total", outcome="dead_lettered") >= 1
    assert value(embedder, "embedder_batch_size", "embedder_batch_size_count", input="image") >= 1
    assert value(embedder, "db_query_duration_seconds", "db_query_duration_seconds_count") > 0
    analyzer = samples(await scrape(system, "analyzer"))
    assert value(analyzer, "vlm_requests", "vlm_requests_total", outcome="ok") >= 1
    assert value(analyzer, "vlm_breaker_open") == 0
    schemer = samples(await scrape(system, "schemer"))
    assert (
        value(
            schemer,
            "job_processing_duration_seconds",
            "job_processing_duration_seconds_count",
            stage="store",
        )
        >= 1
    )


@pytest.mark.parametrize("service", SERVICES)
async def test_promtool_accepts_every_services_metrics(
    system: System, workload: Workload, service: str
) -> None:
    text = await scrape(system, service)
    result = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_prometheus_scrapes_every_service_and_answers_every_dashboard_panel(
    system: System, workload: Workload, prometheus: str
) -> None:
    def scraped() -> bool:
        up = query(prometheus, "up")
        return len(up) == len(SERVICES) and all(r["value"][1] == "1" for r in up)

    await wait_until(lambda: asyncio.to_thread(scraped), timeout=30, what="every target up")
    # Two scrapes after the run at least, so rates over the run have their points; and the
    # clusterer's gauge of clusters is refreshed every FOLDER_SWEEP_INTERVAL_S (10 s), so a
    # panel may fill only after its next round: look again until every panel has data.
    await asyncio.sleep(2.5)
    empty: list[tuple[str, str]] = []

    async def every_panel_answers() -> bool:
        empty.clear()
        for title, expr in dashboard_queries():
            # raises if the expression does not parse
            if not await asyncio.to_thread(query, prometheus, expr):
                empty.append((title, expr))
        return not empty

    try:
        await wait_until(every_panel_answers, timeout=25, interval=1, what="every panel")
    except AssertionError:
        pass  # reported below, with the panels that stayed empty
    assert not empty, f"panels without data after the run: {empty}"
    # A few numbers the run must have put there.
    ingests = await asyncio.to_thread(query, prometheus, "sum(ingest_latency_seconds_count)")
    assert float(ingests[0]["value"][1]) >= 4
