"""scripts/supervise.py, which scripts/up.sh and down.sh run the services with: under supervisord.

The gateway stands in for every service (the config is the same for all but the port). Each
test gets its own run directory (config, socket, pid file, logs), database and bus names; a
supervisord or a service it leaves behind is killed by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import BusNames, service_env

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE = ROOT / "scripts" / "supervise.py"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    handle = Supervised(run_dir, env)
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
