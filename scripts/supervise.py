#!/usr/bin/env python3
"""Run the native bring-up's services under supervisord (scripts/up.sh and scripts/down.sh).

    python scripts/supervise.py start [PROGRAM ...]  # write the config, start what is not running
    python scripts/supervise.py wait                 # wait until each is ready, report the states
    python scripts/supervise.py status               # each program's state, as supervisorctl has it
    python scripts/supervise.py stop                 # stop the programs, then supervisord

Run it with .venv/bin/python: supervisord, supervisorctl and the services run on the
interpreter that runs this script. supervisord restarts a service that exits or is killed.
Each service logs to .run/<name>.log, appended to across restarts and rotated at 10 MiB (five
kept). Each service's section of the config (readable by its owner only) holds the variables
its settings read, and OTEL_*, as `start` found them; started again with one of them changed,
supervisord restarts the services that read it. Humans can use supervisorctl itself:
`.venv/bin/supervisorctl -c .run/supervisord.conf status` (or `tail -f gateway`, `restart
embedder`, ...). --run-dir puts the config, socket, pid file and logs elsewhere than .run/.

Beside the services run extra programs, which have no settings class, only a command, the
variables they are given and a URL that answers once they are ready (logged to .run/<name>.log
too; started before the services and stopped after them):
  prometheus  when /usr/bin/prometheus (any `prometheus` on PATH) is installed, unless
              PROMETHEUS=off: scrapes the services as PROMETHEUS_CONFIG (default
              deploy/monitoring/prometheus.yml) says, on 127.0.0.1:PROMETHEUS_PORT (9090), its
              data in <run dir>/prometheus, kept 7 days.
  phoenix     with TRACE_BACKEND=phoenix: Arize Phoenix from its own virtual environment
              (PHOENIX_VENV, default .run/phoenix-venv; scripts/trace_backend.sh installs it) on
              127.0.0.1:PHOENIX_PORT (6006; OTLP/gRPC on PHOENIX_GRPC_PORT, 4317), its data in
              <run dir>/phoenix. See docs/trace-backend.md.
Called with no names, `start` runs every service and every extra program so configured; called
with names, only those. `start` records each program's readiness URL in <run dir>/programs.json,
which `wait` checks.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What supervisorctl status says of a process that is up, or on its way up.
UP = {"RUNNING", "STARTING", "BACKOFF"}
# Every state supervisorctl status can show a program in.
STATES = UP | {"STOPPED", "STOPPING", "EXITED", "FATAL", "UNKNOWN"}
LOG_TAIL_LINES = 20


@functools.cache
def _settings_names(settings: str) -> frozenset[str]:
    """The variables a settings class (module:name) reads."""
    module, name = settings.split(":")
    fields = getattr(importlib.import_module(module), name).model_fields
    return frozenset(field.upper() for field in fields)


@dataclass(frozen=True)
class Service:
    name: str
    settings: str  # its settings class, module:name
    port_variable: str  # the variable up.sh sets the port with
    default_port: int
    worker: bool  # workers read their probe port from WORKER_HTTP_PORT

    def port(self) -> int:
        return int(os.environ.get(self.port_variable) or self.default_port)

    def reads(self, variable: str) -> bool:
        """Whether the service reads this variable: a setting of its own, or OpenTelemetry's."""
        # Settings are read case-insensitively, as pydantic-settings is configured to.
        return variable.upper() in _settings_names(self.settings) or variable.startswith("OTEL_")

    def environment(self) -> dict[str, str]:
        """The variables it reads, as they are now: supervisorctl update restarts the service
        when one of them changes."""
        found = {k: v for k, v in os.environ.items() if self.reads(k)}
        port = "WORKER_HTTP_PORT" if self.worker else "HTTP_PORT"
        return found | {port: str(self.port())}

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.name]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port()}/ready"


SERVICES = {
    s.name: s
    for s in (
        Service("gateway", "gateway.settings:GatewaySettings", "HTTP_PORT", 8000, False),
        Service("embedder", "embedder.settings:EmbedderSettings", "EMBEDDER_HTTP_PORT", 8081, True),
        Service(
            "clusterer", "clusterer.settings:ClustererSettings", "CLUSTERER_HTTP_PORT", 8082, True
        ),
        Service("analyzer", "analyzer.settings:AnalyzerSettings", "ANALYZER_HTTP_PORT", 8083, True),
        Service("schemer", "schemer.settings:SchemerSettings", "SCHEMER_HTTP_PORT", 8084, True),
    )
}


@dataclass(frozen=True)
class Extra:
    """A program beside the services (Prometheus, a trace backend): not ours, so no settings
    class; it gets exactly the variables named here, and is ready once ready_url answers 200."""

    name: str
    argv: tuple[str, ...]
    ready: str
    variables: tuple[tuple[str, str], ...] = ()
    url: str = ""  # where a person opens it, for the summary

    def environment(self) -> dict[str, str]:
        return dict(self.variables)

    def command(self) -> list[str]:
        return list(self.argv)

    def ready_url(self) -> str:
        return self.ready


Program = Service | Extra


def _port(variable: str, default: int) -> int:
    raw = os.environ.get(variable, "").strip() or str(default)
    if not raw.isdigit():
        raise SystemExit(f"{variable}={raw!r} is not a port number")
    return int(raw)


def prometheus(paths: Paths) -> Extra | None:
    """Prometheus, when it is installed and PROMETHEUS is not off."""
    if os.environ.get("PROMETHEUS", "").strip().lower() == "off":
        return None
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    config = Path(
        os.environ.get("PROMETHEUS_CONFIG") or ROOT / "deploy" / "monitoring" / "prometheus.yml"
    )
    if not config.is_file():
        raise SystemExit(f"no Prometheus config at {config} (PROMETHEUS=off runs without it)")
    port = _port("PROMETHEUS_PORT", 9090)
    argv = (
        binary,
        f"--config.file={config.resolve()}",
        f"--storage.tsdb.path={paths.run_dir / 'prometheus'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=7d",
    )
    url = f"http://127.0.0.1:{port}"
    return Extra("prometheus", argv, f"{url}/-/ready", url=url)


PHOENIX_VENV = ROOT / ".run" / "phoenix-venv"


def trace_backend(paths: Paths) -> Extra | None:
    """The trace viewer TRACE_BACKEND names (phoenix), installed by scripts/trace_backend.sh."""
    backend = os.environ.get("TRACE_BACKEND", "").strip().lower()
    if backend in ("", "off", "none"):
        return None
    if backend != "phoenix":
        raise SystemExit(f"TRACE_BACKEND={backend!r}: the one known is phoenix")
    venv = Path(os.environ.get("PHOENIX_VENV") or PHOENIX_VENV)
    binary = venv / "bin" / "phoenix"
    if not os.access(binary, os.X_OK):
        raise SystemExit(
            f"TRACE_BACKEND=phoenix: no {binary}; scripts/trace_backend.sh installs it"
        )
    port = _port("PHOENIX_PORT", 6006)
    variables = {
        # The UI, the REST and GraphQL APIs and OTLP/HTTP (/v1/traces) on loopback only. Its
        # OTLP/gRPC server always listens on every interface; it can only be moved.
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(_port("PHOENIX_GRPC_PORT", 4317)),
        "PHOENIX_WORKING_DIR": str(paths.run_dir / "phoenix"),  # its SQLite database, ...
        # Traces older than 7 days go, on Sundays at midnight (UTC): the policy is written when
        # the database is made, and a later value leaves it as it was.
        "PHOENIX_DEFAULT_RETENTION_POLICY_DAYS": "7",
        # A trace viewer, nothing more: no analytics pixels, no requests to the internet on
        # its own, no LLM assistant (whose tools include a shell) and no MCP server.
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
        "PHOENIX_ENABLE_MCP_SERVER": "false",
        "PHOENIX_LOG_MIGRATIONS": "false",
    }
    url = f"http://127.0.0.1:{port}"
    return Extra(
        "phoenix", (str(binary), "serve"), f"{url}/readyz", tuple(variables.items()), url=url
    )


def extras(paths: Paths) -> list[Extra]:
    """The extra programs the environment asks for."""
    return [e for e in (prometheus(paths), trace_backend(paths)) if e is not None]


def programs(paths: Paths, names: list[str]) -> list[Program]:
    """The programs called by these names; every service and extra program if none."""
    if names and all(n in SERVICES for n in names):  # the extra programs are not looked at
        return [SERVICES[n] for n in names]
    found: dict[str, Program] = {**SERVICES, **{e.name: e for e in extras(paths)}}
    if unknown := [n for n in names if n not in found]:
        raise SystemExit(
            f"no such program: {', '.join(unknown)} (of {', '.join(found)}; prometheus runs "
            "when installed and PROMETHEUS is not off, phoenix with TRACE_BACKEND=phoenix)"
        )
    return [found[n] for n in names] if names else list(found.values())


@dataclass(frozen=True)
class State:
    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...
    description: str  # "pid 123, uptime 0:01:02", "Exited too quickly (process log may ...)"

    def pid(self) -> int | None:
        words = self.description.replace(",", " ").split()
        if self.state == "RUNNING" and len(words) > 1 and words[0] == "pid":
            return int(words[1])
        return None


class Paths:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir.resolve()
        self.config = self.run_dir / "supervisord.conf"
        self.socket = self.run_dir / "supervisord.sock"
        self.pidfile = self.run_dir / "supervisord.pid"
        self.supervisord_log = self.run_dir / "supervisord.log"
        self.programs = self.run_dir / "programs.json"  # each program's readiness URL

    def log(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"


def _value(text: str) -> str:
    # supervisord expands %(name)s in every value; a literal percent sign is written %%.
    return text.replace("%", "%%")


def _environment(variables: dict[str, str]) -> str:
    """KEY="value",... as supervisord parses it: quotes are kept whole, never escaped."""
    pairs = []
    for key, value in sorted(variables.items()):
        quote = "'" if '"' in value else '"'
        # supervisord strips quotes from both ends of a value, and knows no escapes.
        if "\n" in value or quote in value or value.strip("'\"") != value:
            raise SystemExit(f"{key} has a value supervisord cannot be given (quotes, newline)")
        pairs.append(f"{key}={quote}{value}{quote}")
    return _value(",".join(pairs))


def render_config(paths: Paths, programs: list[Program]) -> str:
    """The supervisord configuration: supervisord itself, its socket, one section per program."""
    lines = [
        "; Written by scripts/supervise.py; edits are overwritten by the next scripts/up.sh.",
        "[supervisord]",
        f"logfile={_value(str(paths.supervisord_log))}",
        "logfile_maxbytes=10MB",
        "logfile_backups=3",
        f"pidfile={_value(str(paths.pidfile))}",
        f"childlogdir={_value(str(paths.run_dir))}",
        f"directory={_value(str(ROOT))}",
        "",
        "[unix_http_server]",
        f"file={_value(str(paths.socket))}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_value(str(paths.socket))}",
    ]
    for program in programs:
        environment = program.environment()
        lines += [
            "",
            f"[program:{program.name}]",
            f"command={_value(shlex.join(program.command()))}",
            f"directory={_value(str(ROOT))}",
            *([f"environment={_environment(environment)}"] if environment else []),
            # Extra programs (Prometheus, the trace backend) start first and stop last, so that
            # the services' first metrics and last spans find them.
            f"priority={100 if isinstance(program, Extra) else 999}",
            "autostart=true",
            "autorestart=true",
            # Up this long counts as started; dying sooner is retried with a growing delay,
            # five times, and then the service is FATAL (a bad setting exits at once with 2).
            "startsecs=5",
            "startretries=5",
            # TERM lets a service finish what it is doing; after 30 s the group is killed.
            "stopsignal=TERM",
            "stopwaitsecs=30",
            # Gateway workers (HTTP_WORKERS) and the embedder's decoders share the group.
            "stopasgroup=true",
            "killasgroup=true",
            # Appended to, never truncated; rotated at 10 MiB with five old logs kept.
            f"stdout_logfile={_value(str(paths.log(program.name)))}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=5",
            "redirect_stderr=true",
        ]
    return "\n".join(lines) + "\n"


def _supervisorctl(paths: Paths, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(paths.config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _supervisord_pid(paths: Paths) -> int | None:
    """supervisord's pid from its pid file, when that process is alive and is supervisord."""
    try:
        pid = int(paths.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"supervisord" in cmdline else None


def states(paths: Paths) -> list[State] | None:
    """`supervisorctl status`, one State per program; None when supervisord does not answer."""
    if not paths.socket.exists():
        return None
    result = _supervisorctl(paths, "status")
    found = []
    for line in result.stdout.splitlines():
        words = line.split(None, 2)
        if len(words) >= 2 and words[1] in STATES:
            found.append(State(words[0], words[1], words[2] if len(words) == 3 else ""))
    # 0: all running, 3: some not running; anything else means supervisord did not answer.
    return found if result.returncode in (0, 3) else None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            text = log.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def report(paths: Paths, found: list[State], ready: dict[str, bool] | None = None) -> bool:
    """Print each program's state (and, for one that is not up, its log's tail); all up?"""
    healthy = True
    for state in found:
        is_ready = ready is None or ready.get(state.name, False)
        ok = state.state == "RUNNING" and is_ready
        healthy &= ok
        note = "" if ready is None else ("ready" if is_ready else "NOT READY")
        print(f"{state.name:<10} {state.state:<9} {state.description}  {note}".rstrip())
        if not ok:
            log = paths.log(state.name)
            print(f"--- last lines of {log}")
            print(log_tail(log))
            print("---")
    return healthy


def _write(path: Path, text: str) -> None:
    """Replace the file at once, readable by its owner only."""
    draft = path.with_name(path.name + ".new")
    draft.unlink(missing_ok=True)
    with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    draft.replace(path)


def start(paths: Paths, names: list[str]) -> int:
    """Write the config; start supervisord, or have the running one apply the new config."""
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    chosen = programs(paths, names)
    # Only ours to read: it holds the services' settings (DATABASE_URL, API keys).
    _write(paths.config, render_config(paths, chosen))
    _write(paths.programs, json.dumps({p.name: p.ready_url() for p in chosen}, indent=1) + "\n")
    if states(paths) is None:
        # supervisord forks into the background once its socket is open; it removes a stale one.
        # Without the services' variables: each gets those from its section of the config
        # (or goes without), so one unset since supervisord started is unset for it too.
        inherited = {
            k: v for k, v in os.environ.items() if not any(s.reads(k) for s in SERVICES.values())
        }
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(paths.config)],
            env=inherited,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            print(result.stdout + result.stderr, end="", file=sys.stderr)
            print(log_tail(paths.supervisord_log), file=sys.stderr)
            return 1
        deadline = time.monotonic() + 30
        while _supervisord_pid(paths) is None or states(paths) is None:
            if time.monotonic() > deadline:
                print("supervisord did not answer; see", paths.supervisord_log, file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"supervisord started (pid {_supervisord_pid(paths)}, config {paths.config})")
    else:
        # Already running: add, change or remove programs as the config now says (a program
        # whose section is unchanged keeps running), then start those that stopped or gave up.
        for args in (("update",), ("start", *(p.name for p in chosen))):
            result = _supervisorctl(paths, *args)
            for line in result.stdout.splitlines():
                if "already started" not in line:
                    print(line)
    for program in chosen:
        at = f", {program.url}" if isinstance(program, Extra) and program.url else ""
        print(f"{program.name} runs under supervisord (log {paths.log(program.name)}{at})")
    return 0


def _ready(url: str | None) -> bool:
    if url is None:  # a program we know no readiness URL of: supervisord's word is enough
        return True
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def ready_urls(paths: Paths) -> dict[str, str]:
    """Each program's readiness URL, as `start` recorded it (a service's, if nothing was)."""
    try:
        recorded: dict[str, str] = json.loads(paths.programs.read_text())
    except (OSError, ValueError):
        recorded = {}
    return {name: s.ready_url() for name, s in SERVICES.items()} | recorded


def wait(paths: Paths, timeout: float) -> int:
    """Wait until every program is ready and supervisord says RUNNING; report them."""
    found = states(paths)
    if found is None:
        print("supervisord is not running: scripts/up.sh starts it", file=sys.stderr)
        return 1
    urls = ready_urls(paths)
    ready: dict[str, bool] = {}
    for name in [s.name for s in found]:
        deadline = time.monotonic() + timeout
        while True:
            state = next((s for s in states(paths) or [] if s.name == name), None)
            # Once ready, only supervisord's word is awaited (RUNNING: up for startsecs).
            ready[name] = ready.get(name, False) or _ready(urls.get(name))
            if state is None or state.state not in UP:
                break  # stopped, or FATAL after its retries: it will not get ready by itself
            if ready[name] and state.state == "RUNNING":
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return 0 if report(paths, states(paths) or [], ready) else 1


def status(paths: Paths) -> int:
    """Report the states as they are (exit 3 if one is not RUNNING, as supervisorctl does)."""
    found = states(paths)
    if found is None:
        print("supervisord is not running")
        return 3
    return 0 if report(paths, found) else 3


def stop(paths: Paths) -> int:
    """Stop every program through supervisorctl, then supervisord by its pid."""
    pid = _supervisord_pid(paths)
    found = states(paths)
    answering = found is not None
    if found is not None:
        # The services first, so that their last spans and metrics still find the extra
        # programs (`stop all` would go by priority, extra programs first).
        if services := [s.name for s in found if s.name in SERVICES and s.state in UP]:
            print(_supervisorctl(paths, "stop", *services).stdout, end="")
        print(_supervisorctl(paths, "stop", "all").stdout, end="")
    if pid is None:
        paths.pidfile.unlink(missing_ok=True)
        if answering:  # its pid file is gone: ask it to exit instead
            print(_supervisorctl(paths, "shutdown").stdout, end="")
        else:
            print("supervisord is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            print(f"supervisord (pid {pid}) did not stop; killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    print(f"stopped supervisord (pid {pid})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run")
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start")
    start_parser.add_argument(
        "programs", nargs="*", help=f"of {', '.join(SERVICES)}, prometheus, phoenix; all if none"
    )
    wait_parser = commands.add_parser("wait")
    wait_parser.add_argument("--timeout", type=float, default=60, help="seconds per program")
    commands.add_parser("status")
    commands.add_parser("stop")
    args = parser.parse_args()
    paths = Paths(args.run_dir)
    if args.command == "start":
        return start(paths, args.programs)
    if args.command == "wait":
        return wait(paths, args.timeout)
    if args.command == "status":
        return status(paths)
    return stop(paths)


if __name__ == "__main__":
    sys.exit(main())
