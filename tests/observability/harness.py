"""The whole system as its users run it natively, for the observability tests.

`running_system` starts all five services under supervisord (scripts/supervise.py, as
scripts/up.sh does) against a fresh database and a uuid-named exchange, with an OTLP/HTTP
receiver of the test's own (`OtlpReceiver`, decoding with opentelemetry-proto) and a fake
Gemini reached through the real google-genai client. Everything it starts is stopped by pid.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.analyzer.fake_gemini import FakeGemini, fake_gemini
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE = [sys.executable, str(ROOT / "scripts" / "supervise.py")]
SERVICES = ("gateway", "embedder", "clusterer", "analyzer", "schemer")
PORT_VARIABLES = {
    "gateway": "HTTP_PORT",
    "embedder": "EMBEDDER_HTTP_PORT",
    "clusterer": "CLUSTERER_HTTP_PORT",
    "analyzer": "ANALYZER_HTTP_PORT",
    "schemer": "SCHEMER_HTTP_PORT",
}
# The ports scripts/up.sh uses: the troubleshooting guide's commands name them.
DEFAULT_PORTS = {"gateway": 8000, "embedder": 8081, "clusterer": 8082, "analyzer": 8083,
                 "schemer": 8084}  # fmt: skip


def _port_free(port: int) -> bool:
    """Nothing listens on it (TIME_WAIT sockets of a run just stopped do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: int
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]
    status: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (protobuf) on 127.0.0.1, in a thread of its own."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource in request.resource_spans:
            attributes = {a.key: _value(a.value) for a in resource.resource.attributes}
            service = str(attributes.get("service.name", ""))
            for scope in resource.scope_spans:
                for s in scope.spans:
                    found.append(
                        Span(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex() or None,
                            name=s.name,
                            service=service,
                            kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            links=tuple((li.trace_id.hex(), li.span_id.hex()) for li in s.links),
                            status=s.status.code,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        with self._lock:
            self.spans.extend(found)
            self.requests += 1

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def all(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def gemini_in_thread() -> Iterator[FakeGemini]:
    """The fake Gemini on a loop of its own: it answers while the test's loop is idle too."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        async with fake_gemini() as fake:
            holder["fake"] = fake
            holder["stop"] = asyncio.Event()
            started.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the fake Gemini did not start")
    try:
        yield holder["fake"]
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
        loop.close()


@dataclass
class System:
    """A running system: where to reach it and what it was started with."""

    env: dict[str, str]
    run_dir: Path
    ports: dict[str, int]
    database_url: str
    receiver: OtlpReceiver
    gemini: FakeGemini
    secrets: dict[str, str] = field(default_factory=dict)
    # Where each log stood before the start: a run dir's logs are appended to across runs.
    log_offsets: dict[str, int] = field(default_factory=dict)
    # What scripts/restore.py printed, when the system was restored from a backup.
    restored: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def log(self, service: str) -> str:
        """What the service logged since this system started."""
        with (self.run_dir / f"{service}.log").open("rb") as log:
            log.seek(self.log_offsets.get(service, 0))
            return log.read().decode(errors="replace")

    def supervise(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SUPERVISE, "--run-dir", str(self.run_dir), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )


async def _create_database(admin_url: str, template: str | None) -> str:
    """A database from the migrated template, or (template None) an empty one."""
    name = f"mb_obs_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        if template is None:
            await conn.execute(f"CREATE DATABASE {name}")
        else:
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
    finally:
        await conn.close()
    return name


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


def _with_password(url: str, password: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{parts.username or 'postgres'}:{password}@{host}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


@asynccontextmanager
async def running_system(
    tmp: Path,
    models: Path,
    *,
    database_url: str,
    template: str,
    rabbitmq_url: str,
    ports: dict[str, int] | None = None,
    run_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
    restore: Path | None = None,
) -> AsyncIterator[System]:
    """Start the five services; stop them (and drop the database) when the block ends.

    `run_dir` (supervisord's config, socket and the services' logs) defaults to one under
    `tmp`; a supervisord already running there is refused rather than reconfigured. With
    `restore`, the database starts empty and that backup is restored into it (and into the
    empty store) with scripts/restore.py before the services start.
    """
    ports = ports or {s: free_port() for s in SERVICES}
    run_dir = run_dir or tmp / "run"
    taken = [s for s, p in ports.items() if not _port_free(p)]
    assert not taken, f"ports of {taken} are taken: is scripts/up.sh running? (scripts/down.sh)"
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    db_name = await _create_database(admin_url, None if restore else template)
    # A password in the URL (the local server trusts loopback and ignores it): the secrets
    # test looks for it in every log line and response.
    db_password = f"db-pw-{uuid.uuid4().hex[:12]}"
    service_db_url = _with_password(database_url, db_password, db_name)
    tag = uuid.uuid4().hex[:10]
    with OtlpReceiver() as receiver, gemini_in_thread() as gemini:
        gemini_key = f"gemini-key-{uuid.uuid4().hex[:16]}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "DATABASE_URL": service_db_url,
            "RABBITMQ_URL": rabbitmq_url,
            "STORAGE_PATH": str(tmp / "storage"),
            "BUS_EXCHANGE": f"t{tag}.mammothbox",
            "BUS_QUEUE_PREFIX": f"t{tag}.",
            "BUS_RETRY_DELAYS": "0.2,0.5",
            "MODEL_DIR": str(models),
            "EMBEDDING_MODEL": "colour",
            "GEMINI_API_KEY": gemini_key,
            "VLM_BASE_URL": gemini.url,
            "VLM_MODEL": "gemini-test",
            "VLM_TIMEOUT": "2",
            "HTTP_HOST": "127.0.0.1",
            "WORKER_HTTP_HOST": "127.0.0.1",
            "LOG_LEVEL": "INFO",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            # The tests run a Prometheus of their own, scraping the ports they chose.
            "PROMETHEUS": "off",
            **{PORT_VARIABLES[s]: str(p) for s, p in ports.items()},
            **(extra_env or {}),
        }
        system = System(
            env,
            run_dir,
            ports,
            service_db_url,
            receiver,
            gemini,
            {"database password": db_password, "Gemini key": gemini_key},
        )
        if restore is not None:
            restored = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "restore.py"), str(restore)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert restored.returncode == 0, restored.stdout + restored.stderr
            system.restored = orjson.loads(restored.stdout.splitlines()[-1])
        migrated = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "migrate.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        try:
            status = system.supervise("status")
            assert "supervisord is not running" in status.stdout, (
                f"a supervisord runs in {run_dir}: stop it first (scripts/down.sh)"
            )
            system.log_offsets = {s: _size(run_dir / f"{s}.log") for s in SERVICES}
            started = system.supervise("start")
            assert started.returncode == 0, started.stdout + started.stderr
            waited = system.supervise("wait", "--timeout", "90")
            assert waited.returncode == 0, waited.stdout + waited.stderr
            yield system
        finally:
            stopped = system.supervise("stop")
            print(stopped.stdout, stopped.stderr)
            await _drop_database(admin_url, db_name)
            await _delete_bus(rabbitmq_url, tag)


async def _delete_bus(rabbitmq_url: str, tag: str) -> None:
    import aio_pika

    from common.topology import cluster_command_queue, queue_specs

    prefix = f"t{tag}."
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        for spec in queue_specs(prefix):
            for name in (spec.name, spec.parking, *(spec.delay(i) for i in range(1, 6))):
                await channel.queue_delete(name)
        await channel.queue_delete(cluster_command_queue(prefix))  # RPC queues go by themselves
        await channel.exchange_delete(f"t{tag}.mammothbox")
    finally:
        await connection.close()


EFFECT_COUNTS = """SELECT
     (SELECT count(*) FROM jobs) AS jobs,
     (SELECT count(*) FROM uploads u JOIN content c ON c.id = u.content_id
      WHERE c.kind = 'image') AS image_uploads,
     (SELECT count(*) FROM content WHERE kind = 'image') AS images,
     (SELECT count(*) FROM content WHERE kind = 'image' AND stage = 'clustered') AS clustered,
     (SELECT count(*) FROM embeddings) AS embeddings,
     (SELECT count(*) FROM content WHERE kind = 'image' AND analysis IS NOT NULL) AS analysed,
     (SELECT coalesce(sum(member_count), 0) FROM clusters) AS members,
     (SELECT count(*) FROM uploads u JOIN content c ON c.id = u.content_id
      WHERE c.kind = 'json') AS json_uploads,
     (SELECT count(*) FROM json_documents) AS documents,
     (SELECT count(DISTINCT upload_id) FROM json_documents) AS placed,
     (SELECT count(*) FROM dead_letters) AS dead_letters,
     (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS unsent"""


async def effect_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """What the pipeline did, counted: to check each effect happened exactly once."""
    return dict(await conn.fetchrow(EFFECT_COUNTS))


async def wait_until(
    check: Callable[[], Any], timeout: float = 60, interval: float = 0.25, what: str = ""
) -> Any:
    """Await `check()` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(interval)


async def get_json(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Any:
    async with session.get(url, **kwargs) as response:
        assert response.status == 200, (url, response.status, await response.text())
        return await response.json()
