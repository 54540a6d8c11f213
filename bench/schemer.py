#!/usr/bin/env python3
"""Schemer throughput: JSON documents/s from ingest to stored row, and approval of 100,000.

Every run gets a fresh, migrated database, its own gateway (`python -m gateway`) and its own
schemer process(es) (`python -m schemer`), started here with one uuid-named exchange and queue
prefix for the whole benchmark (every queue and the exchange are deleted at the end, the
databases dropped, every process stopped by its pid).

- arrays: closed-loop clients POST arrays of 100 distinct documents (`/api/v1/ingest`, JSON
  body, a named collection) at concurrency 8 for --seconds, with SCHEMA_AUTO_APPROVE=true;
  the benchmark then waits until every accepted upload has its `json_documents` row with
  placement 'table' or 'jsonb' and divides the accepted documents by the time from the first
  request to the last row placed (max(placed_at)). A stable shape (sensor readings: a typed
  table) and an unstable one (events: a JSONB table), each with 1 and 2 schemers.
- singles: one JSON object per request at concurrency 32, stable shape, 1 schemer.
- approval: SCHEMA_AUTO_APPROVE=false, 100,000 stable documents ingested (arrays of 1,000 at
  concurrency 4) and staged, then POST /api/v1/schemas/{id}/approve until its status is
  `approved`; the table must hold exactly 100,000 rows.

Also printed per run: the gateway's accept rate (documents/s of 202s) with p50/p99 request
latency, how long the schemers took after the last 202, and the CPU of the gateway, the
schemers, PostgreSQL, RabbitMQ and this load generator (psutil, % of one core).

    .venv/bin/python bench/schemer.py                         # everything, about 5 minutes
    .venv/bin/python bench/schemer.py --only arrays --seconds 5 --replicas 1
    .venv/bin/python bench/schemer.py --only approval --approval-documents 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import psutil
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the repository, not bench/ (bench/embedder.py shadows a package)

from bench.benchdb import scratch_database
from common.topology import cluster_command_queue, queue_specs

OWNER = "bench"
TARGET_STABLE_ARRAYS = 2000.0  # documents/s end to end, stable shape, arrays
TARGET_APPROVAL_S = 60.0  # approval of 100,000 staged documents
STALL_S = 60.0  # give up waiting when nothing was placed for this long
BASE_TS = datetime(2026, 12, 1, tzinfo=UTC)

# ---------------------------------------------------------------------------------------
# Documents: every one distinct (content is addressed by its hash).


def sensor(i: int, rng: random.Random) -> dict[str, Any]:
    """A stable shape: every key always present, one type each."""
    return {
        "sensor_id": f"sensor-{i % 997:04d}",
        "ts": (BASE_TS + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
        "temperature": round(rng.uniform(-20.0, 45.0), 3),
        "humidity": round(rng.uniform(0.0, 100.0), 2),
        "battery": rng.randrange(0, 101),
    }


OPTIONAL = ("user", "session", "page", "duration_ms", "referrer", "tags", "device", "code")


def event(i: int, rng: random.Random) -> dict[str, Any]:
    """An unstable shape: two common keys, 0-3 of 8 optional ones; `code` is sometimes a
    string and sometimes a number."""
    document: dict[str, Any] = {"event_id": f"ev-{i:09d}", "kind": rng.choice(KINDS)}
    for key in rng.sample(OPTIONAL, rng.randrange(0, 4)):
        if key == "user":
            document[key] = f"user-{rng.randrange(10_000)}"
        elif key == "session":
            document[key] = uuid.UUID(int=rng.getrandbits(128)).hex
        elif key == "page":
            document[key] = f"/p/{rng.randrange(500)}"
        elif key == "duration_ms":
            document[key] = rng.randrange(1, 60_000)
        elif key == "referrer":
            document[key] = rng.choice(("https://example.com/", "https://example.org/a", ""))
        elif key == "tags":
            document[key] = rng.sample(("a", "b", "c", "d", "e"), rng.randrange(0, 4))
        elif key == "device":
            document[key] = {"os": rng.choice(("linux", "ios", "android")), "v": rng.random()}
        else:
            document[key] = rng.randrange(1000) if rng.random() < 0.5 else f"E{rng.randrange(99)}"
    return document


KINDS = ("click", "view", "purchase", "signup", "error")
SHAPES: dict[str, Callable[[int, random.Random], dict[str, Any]]] = {
    "stable": sensor,
    "jsonb": event,
}


class Documents:
    """Request bodies of `per_request` distinct documents (one object when it is 1)."""

    def __init__(self, shape: str, per_request: int, seed: int) -> None:
        self.make = SHAPES[shape]
        self.per_request = per_request
        self.rng = random.Random(seed)
        self.next = 0

    def body(self) -> tuple[bytes, int]:
        docs = [self.make(self.next + k, self.rng) for k in range(self.per_request)]
        self.next += self.per_request
        return orjson.dumps(docs if self.per_request > 1 else docs[0]), self.per_request


# ---------------------------------------------------------------------------------------
# CPU of the processes that matter, sampled once a second.


class CpuSampler:
    """Cumulative CPU seconds per group of processes, and of the whole machine."""

    def __init__(self) -> None:
        self.groups: dict[str, Callable[[], list[psutil.Process]]] = {}
        self.prev: dict[tuple[int, float], float] = {}
        self.last_tick = time.time()
        self.cumulative: dict[str, float] = {}
        self.series: list[tuple[float, dict[str, float], float]] = []
        self.task: asyncio.Task[None] | None = None

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0))

    def tick(self) -> None:
        now = time.time()
        seen: dict[tuple[int, float], float] = {}
        for name, find in list(self.groups.items()):
            total = 0.0
            for process in find():
                try:
                    with process.oneshot():
                        times = process.cpu_times()
                        key = (process.pid, process.create_time())
                except psutil.Error:
                    continue
                used = times.user + times.system
                seen[key] = used
                if key in self.prev:
                    total += used - self.prev[key]
                elif key[1] >= self.last_tick - 0.5:  # born since the last tick
                    total += used
            self.cumulative[name] = self.cumulative.get(name, 0.0) + total
        self.prev = seen
        self.last_tick = now
        self.series.append((now, dict(self.cumulative), self._machine_busy()))

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.tick)
            await asyncio.sleep(1.0)

    def start(self) -> None:
        self.tick()
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            except Exception as error:  # a sampling failure must not skip the cleanup
                print(f"cpu sampler failed: {error!r}", file=sys.stderr)
        self.tick()

    def window(self, start: float, end: float) -> dict[str, float]:
        """Average CPU per group between two wall-clock times, % of one core."""
        if not self.series:
            return {}
        before = [s for s in self.series if s[0] <= start] or self.series[:1]
        after = [s for s in self.series if s[0] >= end] or self.series[-1:]
        a, b = before[-1], after[0]
        elapsed = b[0] - a[0]
        if elapsed <= 0:
            return {}
        result = {k: 100 * (b[1].get(k, 0.0) - a[1].get(k, 0.0)) / elapsed for k in b[1]}
        result["machine"] = 100 * (b[2] - a[2]) / elapsed
        result["other"] = result["machine"] - sum(v for k, v in result.items() if k != "machine")
        return result


def family(pids: list[int]) -> list[psutil.Process]:
    processes = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            processes += [process, *process.children(recursive=True)]
        except psutil.Error:
            pass
    return processes


def named(*names: str) -> Callable[[], list[psutil.Process]]:
    def find() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["name"]) if p.info["name"] in names]

    return find


CPU_GROUPS = ("gateway", "schemer", "postgres", "rabbitmq", "bench", "other", "machine")


def cpu_text(cpu: dict[str, float]) -> str:
    return "  ".join(f"{k} {cpu.get(k, float('nan')):.0f}" for k in CPU_GROUPS)


# ---------------------------------------------------------------------------------------
# The services under test.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Bench:
    """What is shared by the runs: the broker names, a temp folder, the CPU sampler."""

    rabbitmq_url: str
    tag: str
    folder: Path
    sampler: CpuSampler
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def exchange(self) -> str:
        return f"bench-{self.tag}"

    @property
    def prefix(self) -> str:
        return f"bench-{self.tag}."

    def env(self, database_url: str, storage: Path, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": database_url,
            "RABBITMQ_URL": self.rabbitmq_url,
            "BUS_EXCHANGE": self.exchange,
            "BUS_QUEUE_PREFIX": self.prefix,
            "STORAGE_PATH": str(storage),
            "LOG_LEVEL": "WARNING",
            "MIN_FREE_DISK_BYTES": "0",
            **extra,
        }

    def spawn(self, module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self.processes:
            self.processes.remove(process)

    async def consumers(self, queue: str) -> int:
        connection = await aio_pika.connect(self.rabbitmq_url)
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.consumer_count or 0)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        finally:
            await connection.close()

    async def cleanup_broker(self) -> None:
        """Delete every queue of the topology under the prefix, and the exchange."""
        connection = await aio_pika.connect(self.rabbitmq_url)
        try:
            channel = await connection.channel()
            names = [cluster_command_queue(self.prefix)]  # RPC queues go by themselves
            for spec in queue_specs(self.prefix):
                names += [spec.name, spec.parking, *(spec.delay(i) for i in range(1, 6))]
            for name in names:
                if channel.is_closed:
                    channel = await connection.channel()
                try:
                    await channel.queue_delete(name)
                except aio_pika.exceptions.AMQPError as error:
                    print(f"could not delete queue {name}: {error}", file=sys.stderr)
            if channel.is_closed:
                channel = await connection.channel()
            await channel.exchange_delete(self.exchange)
        finally:
            await connection.close()


@dataclass
class Stack:
    url: str  # the gateway
    database_url: str
    pool: asyncpg.Pool
    gateway: subprocess.Popen[bytes]
    schemers: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def dead(self) -> list[str]:
        """Logs of processes that exited early (last lines)."""
        found = []
        for process, log in zip([self.gateway, *self.schemers], self.logs, strict=True):
            if process.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                found.append(f"{log.name} exited {process.returncode}:\n" + "\n".join(tail))
        return found


@contextlib.asynccontextmanager
async def stack(bench: Bench, name: str, replicas: int, auto_approve: bool) -> AsyncIterator[Stack]:
    """A fresh database with a gateway and `replicas` schemers running on it."""
    async with scratch_database("mb_bench_schemer") as database_url:
        storage = bench.folder / name
        storage.mkdir()
        port = free_port()
        gateway_env = bench.env(database_url, storage, HTTP_HOST="127.0.0.1", HTTP_PORT=str(port))
        logs = [bench.folder / f"{name}-gateway.log"]
        gateway = bench.spawn("gateway", gateway_env, logs[0])
        schemers: list[subprocess.Popen[bytes]] = []
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url, gateway, logs[0])
            schemer_env = bench.env(
                database_url,
                storage,
                WORKER_HTTP_HOST="127.0.0.1",
                WORKER_HTTP_PORT="0",
                SCHEMA_AUTO_APPROVE="true" if auto_approve else "false",
            )
            for i in range(replicas):
                logs.append(bench.folder / f"{name}-schemer{i}.log")
                schemers.append(bench.spawn("schemer", schemer_env, logs[-1]))
            started = Stack(url, database_url, pool, gateway, schemers, logs)
            queues = [s.name for s in queue_specs(bench.prefix) if s.service == "schemer"]
            deadline = time.monotonic() + 60
            while True:
                counts = [await bench.consumers(q) for q in queues]
                if all(c >= replicas for c in counts):
                    break
                if started.dead() or time.monotonic() > deadline:
                    raise RuntimeError("schemers did not start:\n" + "\n".join(started.dead()))
                await asyncio.sleep(0.3)
            bench.sampler.groups.update(
                gateway=lambda: family([gateway.pid]),
                schemer=lambda: family([s.pid for s in schemers]),
            )
            yield started
        finally:
            bench.sampler.groups.pop("gateway", None)
            bench.sampler.groups.pop("schemer", None)
            for process in [*schemers, gateway]:
                bench.stop(process)
            await pool.close()


async def wait_ready(url: str, gateway: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited:\n{log.read_text(errors='replace')}")
            try:
                async with session.get(f"{url}/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the gateway did not become ready in 60 s")


# ---------------------------------------------------------------------------------------
# Load and measurement.


@dataclass
class Load:
    started: float  # wall clock, when the first request went out
    ended: float  # wall clock, when the last response came back
    upload_ids: list[str]
    latencies: list[float]
    errors: Counter[int]
    requests: int

    @property
    def seconds(self) -> float:
        return self.ended - self.started


async def load(
    url: str,
    collections: list[str],
    documents: Documents,
    concurrency: int,
    seconds: float | None = None,
    requests: int | None = None,
) -> Load:
    """Closed-loop clients: each sends its next request when the last one is answered;
    client i sends to collection i mod len(collections)."""
    ids: list[str] = []
    latencies: list[float] = []
    errors: Counter[int] = Counter()
    sent = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    started = time.time()
    deadline = time.perf_counter() + seconds if seconds is not None else float("inf")
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(i: int) -> None:
            nonlocal sent
            params = {"owner": OWNER, "collection": collections[i % len(collections)]}
            while time.perf_counter() < deadline and (requests is None or sent < requests):
                sent += 1
                body, _ = documents.body()
                start = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}/api/v1/ingest", data=body, params=params, headers=headers
                    ) as response:
                        answer = await response.read()
                        status = response.status
                except aiohttp.ClientError:
                    errors[0] += 1
                    await asyncio.sleep(0.1)
                    continue
                if status == 202:
                    latencies.append(time.perf_counter() - start)
                    ids.extend(orjson.loads(answer)["system_ids"])
                else:
                    errors[status] += 1
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return Load(started, time.time(), ids, latencies, errors, sent)


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else float("nan")
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def wait_count(stack: Stack, query: str, expected: int, what: str) -> tuple[bool, int, float]:
    """Poll `query` (a count) until it reaches `expected`, or nothing moves for STALL_S."""
    last, moved = -1, time.monotonic()
    while True:
        count: int = await stack.pool.fetchval(query)
        if count >= expected:
            return True, count, time.time()
        if count != last:
            last, moved = count, time.monotonic()
        elif time.monotonic() - moved > STALL_S or stack.dead():
            parked = await stack.pool.fetchval("SELECT count(*) FROM dead_letters")
            print(
                f"  gave up waiting for {what}: {count} of {expected}, {parked} dead letters",
                *stack.dead(),
                sep="\n",
            )
            return False, count, time.time()
        await asyncio.sleep(0.25)


async def collection(stack: Stack, name: str) -> asyncpg.Record:
    row: asyncpg.Record = await stack.pool.fetchrow(
        """SELECT id, status, storage, table_name, document_count FROM json_collections
           WHERE owner = $1 AND name = $2""",
        OWNER,
        name,
    )
    return row


async def table_rows(stack: Stack, table_name: str | None) -> int:
    if table_name is None:
        return 0
    quoted = await stack.pool.fetchval("SELECT quote_ident($1)", table_name)
    rows: int = await stack.pool.fetchval(f"SELECT count(*) FROM collections.{quoted}")
    return rows


@dataclass
class Result:
    label: str
    shape: str
    replicas: int
    per_request: int
    concurrency: int
    load: Load
    complete: bool
    placed: int
    rows: int
    storage: str
    e2e_seconds: float
    cpu_load: dict[str, float]
    cpu_drain: dict[str, float]

    @property
    def accepted(self) -> int:
        return len(self.load.upload_ids)

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.load.seconds

    @property
    def e2e_rate(self) -> float:
        return self.placed / self.e2e_seconds if self.complete else float("nan")

    @property
    def drain_seconds(self) -> float:
        return self.e2e_seconds - self.load.seconds


async def end_to_end(
    bench: Bench,
    label: str,
    shape: str,
    replicas: int,
    per_request: int,
    concurrency: int,
    seconds: float,
    seed: int,
    spread: int = 1,
) -> Result:
    name = label.replace("-", "_")
    names = [name] if spread == 1 else [f"{name}_c{k}" for k in range(spread)]
    async with stack(bench, name, replicas, auto_approve=True) as s:
        documents = Documents(shape, per_request, seed)
        run = await load(s.url, names, documents, concurrency, seconds=seconds)
        complete, _, _ = await wait_count(
            s,
            "SELECT count(*) FROM json_documents WHERE placement IN ('table', 'jsonb')",
            len(run.upload_ids),
            f"{label}: rows placed",
        )
        placed, last = await s.pool.fetchrow(
            """SELECT count(*), max(placed_at) FROM json_documents
               WHERE upload_id = ANY($1::uuid[]) AND placement IN ('table', 'jsonb')""",
            run.upload_ids,
        )
        complete = complete and placed == len(run.upload_ids)
        infos = [await collection(s, n) for n in names]
        info = infos[0]
        rows = sum([await table_rows(s, i["table_name"] if i else None) for i in infos])
        last_placed = last.timestamp() if last else time.time()
        result = Result(
            label,
            shape,
            replicas,
            per_request,
            concurrency,
            run,
            complete and rows == placed,
            placed,
            rows,
            f"{info['storage']}/{info['status']}" if info else "-",
            last_placed - run.started,
            bench.sampler.window(run.started, run.ended),
            bench.sampler.window(run.ended, max(last_placed, run.ended + 1)),
        )
    print_run(result)
    return result


def print_run(r: Result) -> None:
    errors = ", ".join(f"{k or 'conn'}: {v}" for k, v in sorted(r.load.errors.items())) or "0"
    print(
        f"{r.label}: {r.load.requests} requests in {r.load.seconds:.1f} s, accepted "
        f"{r.accepted} documents ({r.accept_rate:.0f}/s, p50 {pct(r.load.latencies, 50):.1f} "
        f"ms, p99 {pct(r.load.latencies, 99):.1f} ms, errors {errors}); placed {r.placed}, "
        f"table rows {r.rows}, last row {r.drain_seconds:.1f} s after the last 202 -> "
        f"{r.e2e_rate:.0f} documents/s end to end; collection {r.storage}",
        flush=True,
    )
    print(f"  cpu while loading: {cpu_text(r.cpu_load)}")
    print(f"  cpu after loading: {cpu_text(r.cpu_drain)}", flush=True)


@dataclass
class Approval:
    documents: int
    load: Load
    staged: int
    staged_seconds: float
    approve_seconds: float
    approved: bool
    rows: int
    placed: int
    cpu_staging: dict[str, float]
    cpu_approval: dict[str, float]


async def approval(bench: Bench, total: int, per_request: int, concurrency: int) -> Approval:
    name = "approval"
    async with stack(bench, name, 1, auto_approve=False) as s:
        documents = Documents("stable", per_request, seed=99)
        run = await load(s.url, [name], documents, concurrency, requests=-(-total // per_request))
        ok, staged, seen = await wait_count(
            s,
            "SELECT count(*) FROM json_documents WHERE placement = 'staged'",
            len(run.upload_ids),
            "approval: documents staged",
        )
        staged_at = await s.pool.fetchval("SELECT max(created_at) FROM json_documents")
        staged_end = staged_at.timestamp() if staged_at else seen
        info = await collection(s, name)
        print(
            f"approval: {len(run.upload_ids)} documents accepted in {run.seconds:.1f} s "
            f"({len(run.upload_ids) / run.seconds:.0f}/s, p50 {pct(run.latencies, 50):.0f} ms, "
            f"p99 {pct(run.latencies, 99):.0f} ms), {staged} staged "
            f"{staged_end - run.started:.1f} s after the first request; collection "
            f"{info['storage'] if info else '-'}/{info['status'] if info else '-'}",
            flush=True,
        )
        cpu_staging = bench.sampler.window(run.started, staged_end)
        print(f"  cpu while staging: {cpu_text(cpu_staging)}")
        approved, seconds, began = False, float("nan"), time.time()
        if ok and info is not None:
            async with aiohttp.ClientSession() as session:
                began = time.time()
                start = time.perf_counter()
                async with session.post(f"{s.url}/api/v1/schemas/{info['id']}/approve") as r:
                    if r.status != 202:
                        print(f"  approve answered {r.status}: {await r.text()}")
                deadline = start + 600
                while r.status == 202 and time.perf_counter() < deadline:
                    async with session.get(f"{s.url}/api/v1/schemas/{info['id']}") as answer:
                        status = (await answer.json())["status"]
                    if status == "approved":
                        seconds = time.perf_counter() - start
                        approved = True
                        break
                    if s.dead():
                        print(*s.dead(), sep="\n")
                        break
                    await asyncio.sleep(0.2)
        done = time.time()
        info = await collection(s, name)
        rows = await table_rows(s, info["table_name"] if info else None)
        placed = await s.pool.fetchval(
            "SELECT count(*) FROM json_documents WHERE placement = 'table'"
        )
        result = Approval(
            total,
            run,
            staged,
            staged_end - run.started,
            seconds,
            approved,
            rows,
            placed,
            cpu_staging,
            bench.sampler.window(began, done),
        )
    print(
        f"approval: approve -> approved in {result.approve_seconds:.1f} s; table rows {rows}, "
        f"json_documents in the table {placed}",
        flush=True,
    )
    print(f"  cpu while approving: {cpu_text(result.cpu_approval)}", flush=True)
    return result


# ---------------------------------------------------------------------------------------


def summary(results: list[Result], approved: Approval | None, seconds: float) -> None:
    print()
    if results:
        print(
            f"{'run':<22} {'schemers':>8} {'docs/req':>8} {'conc':>4} {'accepted':>9} "
            f"{'202 docs/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'drain s':>7} "
            f"{'e2e docs/s':>10}  target"
        )
        for r in results:
            target = "reported"
            if r.shape == "stable" and r.per_request > 1:
                met = r.complete and r.e2e_rate >= TARGET_STABLE_ARRAYS
                target = f">= {TARGET_STABLE_ARRAYS:.0f}: {'met' if met else 'NOT met'}"
            if not r.complete:
                target += " (INCOMPLETE)"
            print(
                f"{r.label:<22} {r.replicas:>8} {r.per_request:>8} {r.concurrency:>4} "
                f"{r.accepted:>9} {r.accept_rate:>10.0f} {pct(r.load.latencies, 50):>7.1f} "
                f"{pct(r.load.latencies, 99):>7.1f} {r.drain_seconds:>7.1f} "
                f"{r.e2e_rate:>10.0f}  {target}"
            )
        print()
        print(f"CPU, % of one core (2 cores = 200), averaged over the {seconds:.0f} s of load:")
        print(f"{'run':<22} " + " ".join(f"{k:>8}" for k in CPU_GROUPS))
        for r in results:
            cpu = r.cpu_load
            print(f"{r.label:<22} " + " ".join(f"{cpu.get(k, 0):>8.0f}" for k in CPU_GROUPS))
        print("... and from the last 202 to the last row placed:")
        for r in results:
            cpu = r.cpu_drain
            print(f"{r.label:<22} " + " ".join(f"{cpu.get(k, 0):>8.0f}" for k in CPU_GROUPS))
    if approved is not None:
        a = approved
        met = a.approved and a.rows == a.documents and a.approve_seconds < TARGET_APPROVAL_S
        print()
        print(
            f"approval of {a.staged} staged documents: {a.approve_seconds:.1f} s "
            f"(target < {TARGET_APPROVAL_S:.0f} s: {'met' if met else 'NOT met'}), "
            f"{a.approved * a.documents / a.approve_seconds if a.approved else 0:.0f} docs/s; "
            f"table rows {a.rows} (expected {a.documents}: "
            f"{'ok' if a.rows == a.documents else 'WRONG'})"
        )
        print(
            f"  staging: {len(a.load.upload_ids)} accepted at "
            f"{len(a.load.upload_ids) / a.load.seconds:.0f} docs/s, all staged after "
            f"{a.staged_seconds:.1f} s ({a.staged / a.staged_seconds:.0f} docs/s)"
        )
        print(f"  cpu while staging:   {cpu_text(a.cpu_staging)}")
        print(f"  cpu while approving: {cpu_text(a.cpu_approval)}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=("arrays", "singles", "approval"),
        help="run only these parts (repeatable); default: all three",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="load per run (15)")
    parser.add_argument("--replicas", default="1,2", help="schemer counts for arrays (1,2)")
    parser.add_argument(
        "--shapes", default="stable,jsonb", help="document shapes for arrays (stable,jsonb)"
    )
    parser.add_argument("--batch", type=int, default=100, help="documents per array (100)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients for arrays (8)")
    parser.add_argument(
        "--collections",
        type=int,
        default=1,
        help="spread the array clients over this many named collections (1; a diagnostic)",
    )
    parser.add_argument("--singles-concurrency", type=int, default=32)
    parser.add_argument("--approval-documents", type=int, default=100_000)
    args = parser.parse_args()
    parts = set(args.only or ("arrays", "singles", "approval"))
    replicas = [int(r) for r in args.replicas.split(",") if r]
    shapes = [s for s in args.shapes.split(",") if s]
    spread = args.collections
    # The benchmark's own messages only (migrations log every file they apply).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    sampler = CpuSampler()
    sampler.groups.update(
        postgres=named("postgres"),
        rabbitmq=named("beam.smp", "erl_child_setup", "epmd", "inet_gethost"),
        bench=lambda: [psutil.Process()],
    )
    bench = Bench(
        os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        uuid.uuid4().hex[:8],
        Path(tempfile.mkdtemp(prefix="mb-bench-schemer-")),
        sampler,
    )
    print(
        f"cores: {os.cpu_count()}, {psutil.virtual_memory().total / 2**30:.0f} GiB, seconds per "
        f"run: {args.seconds}, broker names bench-{bench.tag}",
        flush=True,
    )
    results: list[Result] = []
    approved: Approval | None = None
    sampler.start()
    try:
        if "arrays" in parts:
            for shape in shapes:
                for n in replicas:
                    results.append(
                        await end_to_end(
                            bench,
                            f"{shape}-arrays-{n}" + (f"-x{spread}" if spread > 1 else ""),
                            shape,
                            n,
                            args.batch,
                            args.concurrency,
                            args.seconds,
                            seed=len(results),
                            spread=spread,
                        )
                    )
        if "singles" in parts:
            results.append(
                await end_to_end(
                    bench,
                    "stable-singles-1",
                    "stable",
                    1,
                    1,
                    args.singles_concurrency,
                    args.seconds,
                    seed=50,
                )
            )
        if "approval" in parts:
            approved = await approval(bench, args.approval_documents, 1000, 4)
    finally:
        try:
            await sampler.stop()
        finally:
            for process in list(bench.processes):
                bench.stop(process)
            await bench.cleanup_broker()
            subprocess.run(["rm", "-rf", str(bench.folder)], check=False)
    summary(results, approved, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
