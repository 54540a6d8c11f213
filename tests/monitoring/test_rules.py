"""deploy/monitoring: promtool accepts the config and the rules, the rules' unit tests pass,
and the rules and the dashboard use only the metrics the services expose (CONTRACT).

promtool and Prometheus are Debian's `prometheus` package; without it these tests fail
(they do not skip): CI installs it (.ci/run).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.monitoring.prom import (
    ALERTS,
    DASHBOARD,
    INSTALL_HINT,
    MONITORING,
    PROMETHEUS_CONFIG,
    RECORDING,
    RULE_TESTS,
    api_get,
    binary,
    dashboard_panels,
    dashboard_queries,
    query,
    render_config,
    start_prometheus,
)
from tests.ports import free_port

PROVISIONING = MONITORING / "grafana" / "provisioning"

# The metrics the services expose, by name and type (the contract the rules are written to).
CONTRACT: dict[str, str] = {
    # Every service.
    "jobs_processed_total": "counter",  # {service, outcome}
    "job_processing_duration_seconds": "histogram",  # {service, stage}
    "db_query_duration_seconds": "histogram",  # {operation}
    "bus_publish_refused_total": "counter",  # {destination, reason}
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "up": "gauge",  # Prometheus' own, per target {job, instance}
    # Gateway.
    "ingest_latency_seconds": "histogram",
    "search_latency_seconds": "histogram",  # {query}
    "queue_depth": "gauge",  # {queue}
    "dlq_depth": "gauge",  # {queue}
    "outbox_lag_seconds": "gauge",
    "outbox_pending": "gauge",
    "oldest_unfinished_seconds": "gauge",  # {stage}
    "storage_free_bytes": "gauge",
    "storage_total_bytes": "gauge",
    # Embedder.
    "embedder_batch_size": "histogram",  # {input}
    "embedder_inference_seconds": "histogram",  # {input}
    "embedder_items_total": "counter",  # {input}
    "embedder_decoder_restarts_total": "counter",  # {reason}
    # Analyzer.
    "vlm_requests_total": "counter",  # {outcome}
    "vlm_latency_seconds": "histogram",
    "vlm_breaker_open": "gauge",
    "vlm_rate_limit_wait_seconds": "histogram",
    # Clusterer.
    "cluster_assignment_seconds": "histogram",  # {outcome}
    "clusters": "gauge",  # {model, provisional}
    # Schemer.
    "schemer_batch_seconds": "histogram",
    "schemer_documents_total": "counter",  # {placement}
}


def _series(name: str, kind: str) -> set[str]:
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return {name}


SERIES = {series for name, kind in CONTRACT.items() for series in _series(name, kind)}
JOBS = {
    "gateway": "127.0.0.1:8000",
    "embedder": "127.0.0.1:8081",
    "clusterer": "127.0.0.1:8082",
    "analyzer": "127.0.0.1:8083",
    "schemer": "127.0.0.1:8084",
}
SECTIONS = ("Workers and queues", "VLM", "Performance", "Memory", "Storage", "Monitoring")
RECORDING_NAME = re.compile(r"^mammothbox:[a-z0-9_]+:[a-z0-9_]+$")

# PromQL words that look like metric names: operators and modifiers.
_KEYWORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "atan2", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A whole identifier (not the tail of a number such as 1e9) that no "(" follows (a function).
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names an expression reads.

    Skipped: strings, label matchers {...}, ranges [...], the label lists of by / without /
    on / ignoring / group_left / group_right, offsets, function names and keywords.
    """
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in _load(path)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return _rules(ALERTS)


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules(RECORDING)}


def _test_files() -> list[Path]:
    return sorted(RULE_TESTS.glob("*.yml"))


def _known(name: str, recorded: set[str]) -> bool:
    """A recording rule of recording.yml (its names have colons) or a series of CONTRACT."""
    return name in recorded if ":" in name else name in SERIES


def _unknown(expr: str) -> set[str]:
    recorded = _recorded()
    return {name for name in metric_names(expr) if not _known(name, recorded)}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = binary("promtool")
    if path is None:
        pytest.fail(f"promtool is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


# --- promtool --------------------------------------------------------------------------


def test_promtool_check_config(promtool: str) -> None:
    result = _run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule_file", [ALERTS, RECORDING], ids=lambda path: path.name)
def test_promtool_check_rules(promtool: str, rule_file: Path) -> None:
    result = _run([promtool, "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests(promtool: str) -> None:
    files = _test_files()
    assert files, f"no rule tests in {RULE_TESTS}"
    result = _run([promtool, "test", "rules", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- the metrics the expressions use ------------------------------------------------------


def test_metric_names_skips_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, job) (rate(a_bucket{job="x",le!="1"}[5m])))'
        " > 1e9 and on (queue) group_left (stage) b:c:d offset 1h"
        ' or label_replace(up, "dst", "$1", "src", "(.*)") unless sum(x) without (instance)'
        " / ignoring(le) y_total[5m:1m] * 2 ^ 3"
    )
    assert metric_names(expr) == {"a_bucket", "b:c:d", "up", "x", "y_total"}


@pytest.mark.parametrize("rule_file", [ALERTS, RECORDING], ids=lambda path: path.name)
def test_rules_use_only_contract_metrics(rule_file: Path) -> None:
    for rule in _rules(rule_file):
        name = rule.get("alert") or rule.get("record")
        assert metric_names(rule["expr"]), f"{name}: no metric found in {rule['expr']!r}"
        assert not _unknown(rule["expr"]), f"{name} uses unknown metrics {_unknown(rule['expr'])}"


def test_dashboard_uses_only_contract_metrics() -> None:
    for title, expr in dashboard_queries(DASHBOARD):
        assert metric_names(expr), f"panel {title!r}: no metric found in {expr!r}"
        assert not _unknown(expr), f"panel {title!r} uses unknown metrics {_unknown(expr)}"


# --- the rules -------------------------------------------------------------------------------


def test_recording_rule_names() -> None:
    names = [rule["record"] for rule in _rules(RECORDING)]
    assert len(names) == len(set(names)), "a recording rule is defined twice"
    for name in names:
        assert RECORDING_NAME.match(name), f"{name} is not mammothbox:<metric>:<aggregation>"


def test_alerts_are_labelled_and_annotated() -> None:
    alerts = _alerts()
    assert alerts
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name} has no `for:` duration"
        assert alert.get("labels", {}).get("severity") in {"warning", "critical"}, name
        annotations = alert.get("annotations", {})
        assert annotations.get("summary"), f"{name} has no summary"
        description = annotations.get("description", "")
        assert "docs/troubleshooting.md" in description, f"{name} names no troubleshooting"
        assert any(f'"{section}"' in description for section in SECTIONS), (
            f"{name} names none of the troubleshooting sections {SECTIONS}"
        )
    # The same alert at two severities must differ in its severity.
    keys = [(alert["alert"], alert["labels"]["severity"]) for alert in alerts]
    assert len(keys) == len(set(keys)), "an alert is defined twice at one severity"


REQUIRED_ALERTS = {
    "QueueBackingUp",
    "DeadLetterQueueGrowing",
    "VlmErrorsRising",
    "VlmFallbacksRising",
    "VlmBreakerOpen",
    "IngestLatencyHigh",
    "SearchLatencyHigh",
    "OutboxLagHigh",
    "ServiceDown",
    "MemoryHigh",
    "DiskLow",
}


def test_required_alerts_exist() -> None:
    assert REQUIRED_ALERTS <= {alert["alert"] for alert in _alerts()}


def _alert_cases() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for path in _test_files():
        for case in _load(path).get("tests", []):
            for check in case.get("alert_rule_test", []) or []:
                yield check["alertname"], check.get("exp_alerts") or []


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    cases = list(_alert_cases())
    for alert in _alerts():
        name, severity = alert["alert"], alert["labels"]["severity"]
        fired = [
            expected
            for alertname, expected_alerts in cases
            if alertname == name
            for expected in expected_alerts
            if expected.get("exp_labels", {}).get("severity") == severity
        ]
        quiet = [alertname for alertname, expected in cases if alertname == name and not expected]
        assert fired, f"no unit test makes {name} ({severity}) fire"
        assert quiet, f"no unit test checks that {name} stays quiet"
        assert all(expected.get("exp_annotations") for expected in fired), (
            f"a test of {name} leaves its annotations unchecked"
        )


def test_every_recording_rule_is_unit_tested() -> None:
    tested: set[str] = set()
    for path in _test_files():
        for case in _load(path).get("tests", []):
            for check in case.get("promql_expr_test", []) or []:
                tested |= metric_names(check["expr"])
    untested = _recorded() - tested
    assert not untested, f"recording rules without a promql_expr_test: {sorted(untested)}"


def test_prometheus_config_scrapes_every_service() -> None:
    config = _load(PROMETHEUS_CONFIG)
    jobs = {
        job["job_name"]: [
            target for static in job["static_configs"] for target in static["targets"]
        ]
        for job in config["scrape_configs"]
    }
    assert jobs == {job: [target] for job, target in JOBS.items()}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
    assert sorted(config["rule_files"]) == ["alerts.yml", "recording.yml"]


# --- Grafana ---------------------------------------------------------------------------------


def test_dashboard_panels_have_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels(DASHBOARD)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "two panels share an id"
    titles = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"]["uid"] in {"${datasource}", "prometheus"}, panel["title"]
        exprs = [str(target.get("expr") or "").strip() for target in panel.get("targets", [])]
        assert any(exprs), f"panel {panel['title']!r} has no target with an expr"
    for wanted in (
        "Services up",
        "Ingest rate",
        "Per-stage throughput",
        "Per-stage latency p95",
        "Queue depths",
        "Dead-letter queue depth",
        "VLM outcomes",
        "Search latency p95",
        "Outbox lag",
        "Oldest unfinished per stage",
    ):
        assert wanted in titles


def test_dashboard_queries_fill_in_grafana_variables() -> None:
    raw = DASHBOARD.read_text()
    assert "$__rate_interval" in raw  # the substitution below is exercised
    queries = dashboard_queries(DASHBOARD, interval="2m")
    assert queries
    for _title, expr in queries:
        assert "$" not in expr, expr
    assert any("[2m]" in expr for _title, expr in queries)


def test_grafana_provisioning() -> None:
    datasources = _load(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert [(d["type"], d["uid"]) for d in datasources] == [("prometheus", "prometheus")]
    dashboard = json.loads(DASHBOARD.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == datasources[0]["uid"]
    providers = _load(PROVISIONING / "dashboards" / "mammothbox.yml")["providers"]
    assert [(p["type"], p["options"]["path"]) for p in providers] == [
        ("file", "/var/lib/grafana/dashboards")
    ]


# --- a real Prometheus -----------------------------------------------------------------------


def test_render_config(promtool: str, tmp_path: Path) -> None:
    rendered = yaml.safe_load(render_config({"gateway": "127.0.0.1:1234"}, "1s"))
    assert rendered["global"]["scrape_interval"] == "1s"
    assert rendered["global"]["evaluation_interval"] == "1s"
    assert [job["job_name"] for job in rendered["scrape_configs"]] == ["gateway"]
    assert rendered["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:1234"]}]
    assert rendered["scrape_configs"][0]["metrics_path"] == "/metrics"
    assert [Path(p) for p in rendered["rule_files"]] == [RECORDING, ALERTS]
    config = tmp_path / "prometheus.yml"  # elsewhere than the rules, which are still found
    config.write_text(render_config(JOBS, "5s"))
    result = _run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_prometheus_loads_the_rules_and_scrapes_every_job(promtool: str, tmp_path: Path) -> None:
    # Ports nothing listens on: every target is down, which `up` reports as 0.
    targets = {job: f"127.0.0.1:{free_port()}" for job in JOBS}
    config = tmp_path / "prometheus.yml"
    config.write_text(render_config(targets, "1s"))
    with start_prometheus(config, tmp_path, free_port()) as base_url:
        groups = api_get(base_url, "/api/v1/rules")["groups"]
        loaded = {rule["name"] for group in groups for rule in group["rules"]}
        assert {alert["alert"] for alert in _alerts()} <= loaded
        assert _recorded() <= loaded
        deadline = time.monotonic() + 10
        up: dict[str, str] = {}
        while set(up) != set(JOBS) and time.monotonic() < deadline:
            time.sleep(0.25)
            up = {sample["metric"]["job"]: sample["value"][1] for sample in query(base_url, "up")}
        assert up == dict.fromkeys(JOBS, "0")
        # Every dashboard query parses and runs (nothing to show yet but `up`).
        for title, expr in dashboard_queries(DASHBOARD):
            assert isinstance(query(base_url, expr), list), title
