"""Helpers for tests that run promtool or a real Prometheus against deploy/monitoring.

    dashboard_queries(path)            -> [(panel title, expr)], Grafana variables filled in
    start_prometheus(config, dir, port) a context manager: Prometheus running, its base URL
    query(base_url, expr)              -> the result list of an instant query
    api_get(base_url, path, **params)  -> the `data` of any GET of the HTTP API
    render_config(targets, interval)   -> a prometheus.yml like the real one, other targets

Prometheus is Debian's (/usr/bin/prometheus, /usr/bin/promtool); nothing here installs it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
RECORDING = MONITORING / "recording.yml"
RULE_TESTS = MONITORING / "tests"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "mammothbox.json"

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
INSTALL_HINT = (
    "install Debian's prometheus package (apt-get install prometheus), which brings both "
    "/usr/bin/prometheus and /usr/bin/promtool"
)

# Grafana's interval variables, as $name or ${name} (a ${name:format} too). $__interval_ms
# and the like are left alone (and then refused below, as any other variable is).
_INTERVAL_VARIABLES = ("__rate_interval", "__interval", "interval", "__range")
_VARIABLE = re.compile(
    r"\$\{(?P<braced>" + "|".join(_INTERVAL_VARIABLES) + r")(?::[^}]*)?\}"
    r"|\$(?P<bare>" + "|".join(_INTERVAL_VARIABLES) + r")(?!\w)"
)
_ANY_VARIABLE = re.compile(r"\$\{?[A-Za-z_]")


def binary(name: str) -> str | None:
    """/usr/bin/<name> where Debian puts it, else whatever PATH finds, else None."""
    default = Path("/usr/bin") / name
    if default.is_file():
        return str(default)
    return shutil.which(name)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # A row holds its panels while collapsed; expanded, they follow it at the top level.
        yield from _panels(panel.get("panels", []))


def dashboard_panels(path: Path | str = DASHBOARD) -> list[dict[str, Any]]:
    """Every panel of a dashboard JSON, rows and the panels inside collapsed rows included."""
    dashboard = json.loads(Path(path).read_text())
    return list(_panels(dashboard.get("panels", [])))


def fill_variables(expr: str, interval: str = "1m") -> str:
    """expr with Grafana's interval variables replaced by `interval`; ValueError for others."""
    filled = _VARIABLE.sub(interval, expr)
    if _ANY_VARIABLE.search(filled):
        raise ValueError(f"a Grafana variable other than an interval in {expr!r}")
    return filled


def dashboard_queries(path: Path | str = DASHBOARD, interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, expr) for every target with an expr, in the dashboard's order.

    Grafana's $__rate_interval, $__interval, $interval and $__range (and their ${...} forms)
    become `interval`, so that each expr can go to Prometheus as it is.
    """
    queries = []
    for panel in dashboard_panels(path):
        for target in panel.get("targets", []):
            expr = str(target.get("expr") or "").strip()
            if expr:
                queries.append((str(panel.get("title", "")), fill_variables(expr, interval)))
    return queries


def api_get(base_url: str, path: str, timeout: float = 5.0, **params: str) -> Any:
    """GET base_url + path (the HTTP API); its `data`, or RuntimeError if not a success."""
    url = base_url.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        # A bad query is a 400 (or 422) whose body still says why.
        with error:
            text = error.read().decode(errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            raise RuntimeError(f"GET {url}: HTTP {error.code}: {text[:500]}") from None
    if body.get("status") != "success":
        raise RuntimeError(
            f"GET {url}: {body.get('status')}: {body.get('errorType')}: {body.get('error')}"
        )
    return body.get("data")


def query(base_url: str, expr: str, timeout: float = 5.0) -> list[Any]:
    """An instant query (/api/v1/query): the result list (samples of a vector, usually)."""
    data = api_get(base_url, "/api/v1/query", timeout=timeout, query=expr)
    result: list[Any] = data["result"]
    return result


def _log_tail(log_path: Path, limit: int = 4000) -> str:
    try:
        return log_path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def _wait_ready(
    base_url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise RuntimeError(
                f"Prometheus exited with {code} before it was ready:\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{base_url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Prometheus not ready at {base_url} after {timeout}s:\n{_log_tail(log_path)}"
            )
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop the process we started, by its pid: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextmanager
def start_prometheus(
    config_path: Path | str, tmp_dir: Path | str, port: int, timeout: float = 30.0
) -> Iterator[str]:
    """Run /usr/bin/prometheus with config_path, listening on 127.0.0.1:port.

    Its data goes to tmp_dir/prometheus-data and its log to tmp_dir/prometheus.log. Yields
    the base URL (http://127.0.0.1:port) once /-/ready answers 200; stops the process on
    exit (terminate, wait, kill on timeout).
    """
    if not Path(PROMETHEUS).is_file():
        raise FileNotFoundError(f"{PROMETHEUS} is missing: {INSTALL_HINT}")
    tmp = Path(tmp_dir)
    data = tmp / "prometheus-data"
    data.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "prometheus.log"
    base_url = f"http://127.0.0.1:{port}"
    argv = [
        PROMETHEUS,
        f"--config.file={Path(config_path).resolve()}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        _wait_ready(base_url, process, log_path, timeout)
        yield base_url
    finally:
        _stop(process)


def render_config(
    targets: dict[str, str], scrape_interval: str, source: Path | str = PROMETHEUS_CONFIG
) -> str:
    """A prometheus.yml like `source` but scraping `targets` (job -> host:port) only.

    The global scrape and evaluation intervals (and the scrape timeout) become
    scrape_interval; rule_files stay the same files, as absolute paths, so the rendered
    config can be written anywhere. A job of the source keeps its other settings (such as
    metrics_path); a job it lacks gets /metrics.
    """
    source = Path(source).resolve()
    config = yaml.safe_load(source.read_text())
    config["global"] = dict(config.get("global") or {})
    config["global"].update(
        scrape_interval=scrape_interval,
        evaluation_interval=scrape_interval,
        scrape_timeout=scrape_interval,
    )
    config["rule_files"] = [
        str((source.parent / rule_file).resolve()) for rule_file in config.get("rule_files", [])
    ]
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    scrape_configs = []
    for job_name, target in targets.items():
        job = copy.deepcopy(jobs.get(job_name, {"job_name": job_name, "metrics_path": "/metrics"}))
        job["static_configs"] = [{"targets": [target]}]
        scrape_configs.append(job)
    config["scrape_configs"] = scrape_configs
    rendered: str = yaml.safe_dump(config, sort_keys=False)
    return rendered
