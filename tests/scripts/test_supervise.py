"""scripts/supervise.py, which scripts/up.sh and down.sh run the services with: under supervisord.

The gateway stands in for every service (the config is the same for all but the port). Each
test gets its own run directory (config, socket, pid file, logs), database and bus names; a
supervisord or a service it leaves behind is killed by its pid. The extra programs' sections
are read from the config as rendered; Prometheus really runs (where it is installed), Phoenix
never does (the tests do not install it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import BusNames, service_env
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE = ROOT / "scripts" / "supervise.py"

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


@dataclass
class Supervised:
    run_dir: Path
    env: dict[str, str]
    pids: set[int] = field(default_factory=set)  # every pid seen, to kill whatever is left

    def supervise(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, str(SUPERVISE), "--run-dir", str(self.run_dir), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self._note_supervisord()
        return result

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real supervisorctl on the generated config."""
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    @property
    def config(self) -> Path:
        return self.run_dir / "supervisord.conf"

    def log(self, name: str = "gateway") -> bytes:
        return (self.run_dir / f"{name}.log").read_bytes()

    def pid_of(self, name: str = "gateway") -> int:
        pid = int(self.supervisorctl("pid", name).stdout.strip())
        if pid:
            self.pids.add(pid)
        return pid

    def _note_supervisord(self) -> None:
        try:
            self.pids.add(int((self.run_dir / "supervisord.pid").read_text()))
        except (OSError, ValueError):
            pass


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _killing_what_is_left(handle: Supervised) -> Iterator[Supervised]:
    try:
        yield handle
    finally:
        handle._note_supervisord()
        for pid in handle.pids:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        for pid in handle.pids:
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(
    database_url: str,
    bus_names: BusNames,
    storage_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Supervised]:
    # A short folder: a unix socket's path must stay under 108 bytes.
    run_dir = tmp_path_factory.mktemp("run")
    env = service_env(
        database_url,
        bus_names,
        storage_path,
        HTTP_HOST="127.0.0.1",
        HTTP_PORT=str(free_port()),
        MIN_FREE_DISK_BYTES="0",
    )
    yield from _killing_what_is_left(Supervised(run_dir, env))


@pytest.fixture
def supervised_extras(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    """No service's settings: for extra programs alone (no database, no bus)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "PROMETHEUS"))}
    yield from _killing_what_is_left(Supervised(tmp_path_factory.mktemp("run"), env))


@pytest.fixture(scope="module")
def supervise() -> ModuleType:
    """scripts/supervise.py as a module, to render configs without starting anything."""
    spec = importlib.util.spec_from_file_location("supervise", SUPERVISE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["supervise"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


def sections(config: str) -> dict[str, str]:
    """Each [section] of a rendered config, by name, as text."""
    found: dict[str, str] = {}
    for part in config.split("\n["):
        name, _, body = part.partition("]\n")
        found[name.lstrip("[")] = body
    return found


def test_the_config_runs_prometheus_when_installed_and_not_when_off(
    supervise: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = executable(tmp_path / "bin" / "prometheus")  # installed, as far as PATH says
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {}\n")
    for name in ("PROMETHEUS", "TRACE_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{binary.parent}:/bin")
    monkeypatch.setenv("PROMETHEUS_CONFIG", str(config))
    monkeypatch.setenv("PROMETHEUS_PORT", "9999")
    paths = supervise.Paths(tmp_path / "run")

    everything = sections(supervise.render_config(paths, supervise.programs(paths, [])))
    assert [n for n in everything if n.startswith("program:")] == [
        "program:gateway",
        "program:embedder",
        "program:clusterer",
        "program:analyzer",
        "program:schemer",
        "program:prometheus",
    ]
    section = everything["program:prometheus"]
    assert (
        f"command={binary} --config.file={config} --storage.tsdb.path={paths.run_dir}/prometheus"
        " --web.listen-address=127.0.0.1:9999 --storage.tsdb.retention.time=7d\n"
    ) in section
    assert f"stdout_logfile={paths.run_dir}/prometheus.log\n" in section
    assert "priority=100\n" in section and "environment=" not in section
    assert "priority=999\n" in everything["program:gateway"]  # the services start after it
    # Named, only what is named; a service alone does not even look for Prometheus.
    assert [p.name for p in supervise.programs(paths, ["prometheus"])] == ["prometheus"]
    monkeypatch.setenv("PROMETHEUS_CONFIG", str(tmp_path / "missing.yml"))
    assert [p.name for p in supervise.programs(paths, ["gateway"])] == ["gateway"]
    with pytest.raises(SystemExit, match="no Prometheus config at"):
        supervise.programs(paths, [])
    monkeypatch.setenv("PROMETHEUS_CONFIG", str(config))

    for off in ({"PROMETHEUS": "off"}, {"PATH": "/nonexistent"}):  # off, or not installed
        with monkeypatch.context() as patch:
            for name, value in off.items():
                patch.setenv(name, value)
            rendered = supervise.render_config(paths, supervise.programs(paths, []))
            assert "program:prometheus" not in sections(rendered), off
            with pytest.raises(SystemExit, match="no such program: prometheus"):
                supervise.programs(paths, ["prometheus"])


def test_the_config_runs_phoenix_with_trace_backend_phoenix_only(
    supervise: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS", "off")
    monkeypatch.delenv("TRACE_BACKEND", raising=False)
    monkeypatch.setenv("PHOENIX_VENV", str(tmp_path / "venv"))
    paths = supervise.Paths(tmp_path / "run")
    assert "program:phoenix" not in sections(
        supervise.render_config(paths, supervise.programs(paths, []))
    )

    monkeypatch.setenv("TRACE_BACKEND", "phoenix")
    with pytest.raises(SystemExit, match=r"scripts/trace_backend\.sh installs it"):
        supervise.programs(paths, [])
    binary = executable(tmp_path / "venv" / "bin" / "phoenix")
    monkeypatch.setenv("PHOENIX_PORT", "7007")
    [phoenix] = supervise.programs(paths, ["phoenix"])
    assert phoenix.ready_url() == "http://127.0.0.1:7007/readyz"
    section = sections(supervise.render_config(paths, [phoenix]))["program:phoenix"]
    assert f"command={binary} serve\n" in section
    environment = next(line for line in section.splitlines() if line.startswith("environment="))
    for pair in (
        'PHOENIX_HOST="127.0.0.1"',  # its UI and OTLP/HTTP on loopback only
        'PHOENIX_PORT="7007"',
        'PHOENIX_GRPC_PORT="4317"',
        f'PHOENIX_WORKING_DIR="{paths.run_dir}/phoenix"',
        'PHOENIX_TELEMETRY_ENABLED="false"',
        'PHOENIX_DISABLE_AGENT_ASSISTANT="true"',
        'PHOENIX_DEFAULT_RETENTION_POLICY_DAYS="7"',
    ):
        assert pair in environment
    assert "OTEL_" not in environment  # the services' exporter settings are not Phoenix's

    monkeypatch.setenv("TRACE_BACKEND", "jaeger")
    with pytest.raises(SystemExit, match="the one known is phoenix"):
        supervise.programs(paths, [])


def test_supervise_runs_prometheus_and_waits_until_it_is_ready(
    supervised_extras: Supervised, tmp_path: Path
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    port = free_port()
    supervised_extras.env |= {"PROMETHEUS_CONFIG": str(config), "PROMETHEUS_PORT": str(port)}

    started = supervised_extras.supervise("start", "prometheus")
    assert started.returncode == 0, started.stdout + started.stderr
    log = supervised_extras.run_dir / "prometheus.log"
    assert (
        f"prometheus runs under supervisord (log {log}, http://127.0.0.1:{port})" in started.stdout
    )
    waited = supervised_extras.supervise("wait", "--timeout", "30")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "prometheus RUNNING" in waited.stdout and "ready" in waited.stdout
    pid = supervised_extras.pid_of("prometheus")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as response:
        assert response.status == 200
    assert (supervised_extras.run_dir / "prometheus").is_dir()  # its data, in the run dir
    status = supervised_extras.supervise("status")
    assert status.returncode == 0 and f"pid {pid}," in status.stdout, status.stdout

    stopped = supervised_extras.supervise("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "prometheus: stopped" in stopped.stdout
    assert not any(alive(p) for p in supervised_extras.pids)


def test_supervise_restarts_the_gateway_and_appends_to_its_log_when_killed_with_sigkill(
    supervised: Supervised,
) -> None:
    started = supervised.supervise("start", "gateway")
    assert started.returncode == 0, started.stdout + started.stderr
    waited = supervised.supervise("wait", "--timeout", "60")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "gateway    RUNNING" in waited.stdout and "ready" in waited.stdout
    first_pid = supervised.pid_of()
    before = supervised.log()
    assert b"bus connected" in before

    os.kill(first_pid, signal.SIGKILL)
    wait_for(lambda: not alive(first_pid), "the killed gateway to be gone", timeout=10)
    wait_for(lambda: supervised.pid_of() not in (0, first_pid), "supervisord to restart it")
    waited = supervised.supervise("wait", "--timeout", "60")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    second_pid = supervised.pid_of()
    after = supervised.log()
    assert after.startswith(before), "the log was truncated by the restart"
    assert after[len(before) :].count(b"bus connected") == 1  # the second run's own lines
    supervisord_log = (supervised.run_dir / "supervisord.log").read_text()
    assert "exited: gateway (terminated by SIGKILL; not expected)" in supervisord_log

    # up.sh run again: no second gateway, the running one untouched, its log kept.
    again = supervised.supervise("start", "gateway")
    assert again.returncode == 0, again.stdout + again.stderr
    status = supervised.supervise("status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("gateway") == 1 and f"pid {second_pid}," in status.stdout
    assert supervised.pid_of() == second_pid
    assert supervised.log().startswith(after)

    stopped = supervised.supervise("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not alive(second_pid)
    assert not any(alive(pid) for pid in supervised.pids)


def test_supervise_restarts_only_the_service_that_reads_a_variable_when_it_changes(
    supervised: Supervised,
) -> None:
    supervised.env["LOG_LEVEL"] = "INFO"
    assert supervised.supervise("start", "gateway").returncode == 0
    assert supervised.supervise("wait", "--timeout", "60").returncode == 0
    first_pid = supervised.pid_of()
    assert supervised.config.stat().st_mode & 0o077 == 0  # it holds DATABASE_URL, API keys

    supervised.env["SHELL_ONLY_NOISE"] = "x"  # not a setting: nothing to restart for
    assert supervised.supervise("start", "gateway").returncode == 0
    assert supervised.pid_of() == first_pid

    supervised.env["LOG_LEVEL"] = "WARNING"
    again = supervised.supervise("start", "gateway")
    assert again.returncode == 0 and "gateway: updated process group" in again.stdout, again
    assert supervised.supervise("wait", "--timeout", "60").returncode == 0
    assert supervised.pid_of() not in (0, first_pid)
    # Unset now, unset for the service too (supervisord did not keep it from its start).
    del supervised.env["LOG_LEVEL"]
    assert "updated process group" in supervised.supervise("start", "gateway").stdout
    assert "LOG_LEVEL" not in supervised.config.read_text()
    assert supervised.supervise("stop").returncode == 0


def test_supervise_reports_a_service_as_stopped_with_its_log_when_it_was_stopped(
    supervised: Supervised,
) -> None:
    assert supervised.supervise("start", "gateway").returncode == 0
    assert supervised.supervise("wait", "--timeout", "60").returncode == 0
    pid = supervised.pid_of()

    stopped = supervised.supervisorctl("stop", "gateway")
    assert "gateway: stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not alive(pid)
    status = supervised.supervise("status")
    assert status.returncode == 3, status.stdout
    assert "gateway    STOPPED" in status.stdout
    assert f"last lines of {supervised.run_dir}/gateway.log" in status.stdout
    assert "bus connected" in status.stdout  # the log's tail
    waited = supervised.supervise("wait", "--timeout", "5")
    assert waited.returncode == 1 and "NOT READY" in waited.stdout, waited.stdout

    assert supervised.supervise("stop").returncode == 0
    assert not any(alive(p) for p in supervised.pids)
    nothing = supervised.supervise("stop")  # as down.sh run when nothing runs
    assert nothing.returncode == 0 and "supervisord is not running" in nothing.stdout


def test_supervise_reports_fatal_with_the_log_when_a_service_cannot_start(
    supervised: Supervised,
) -> None:
    supervised.env["DB_POOL_SIZE"] = "many"  # the gateway exits at once, naming it
    assert supervised.supervise("start", "gateway").returncode == 0
    waited = supervised.supervise("wait", "--timeout", "60")
    assert waited.returncode == 1, waited.stdout
    assert "gateway    FATAL" in waited.stdout
    assert "DB_POOL_SIZE" in waited.stdout  # from the log's tail
    assert supervised.supervise("stop").returncode == 0
