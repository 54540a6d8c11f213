#!/usr/bin/env python3
"""Ingest throughput: closed-loop clients uploading distinct ~100 KB JPEGs.

Starts its own gateway (fresh database, uuid-named exchange and queues, removed afterwards)
unless --url names a running one, then for each concurrency runs for --seconds and prints
uploads/s, latency percentiles and the gateway's RSS before and after.

    .venv/bin/python bench/ingest.py                # concurrency 1, 8, 32 for 20 s each
    .venv/bin/python bench/ingest.py --concurrency 32 --seconds 5
    .venv/bin/python bench/ingest.py --tracing      # the cost of tracing, see below

--storage s3 starts two gateways side by side on one database, one on a storage folder and
one on S3 (a local moto server, the tests' own), and loads them in turn, round after round,
printing each one's uploads/s, latency and the gateway's CPU-seconds per upload; the local S3
server shares the machine's cores, so its throughput measures the server more than the
gateway, and the CPU per upload is the figure to compare:

    .venv/bin/python bench/ingest.py --storage s3 --concurrency 8 --seconds 10 --rounds 3

--tracing starts three gateways side by side on one database — traces sampled at 1.0 and
exported, the default sampling (parentbased_traceidratio 0.1) exported, and tracing off
(OTEL_SDK_DISABLED=true) — with an OTLP/HTTP sink of its own, and loads them in turn, round
after round (so the machine's drift hits each alike), at the first --concurrency given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchdb import server_url
from common.topology import queue_specs


def base_jpegs(count: int, target: int = 100_000, side: int = 300) -> list[bytes]:
    """A few JPEGs of at least `target` bytes (noise of `side` pixels blurred into texture)."""
    images = []
    rng = random.Random(1)
    for _ in range(count):
        image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        image = image.resize((side * 2, side * 2), Image.Resampling.BICUBIC)
        quality = 60
        while True:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality)
            if buffer.tell() >= target or quality >= 95:
                break
            quality += 5
        images.append(buffer.getvalue())
    return images


def distinct(jpeg: bytes, n: int) -> bytes:
    """The same picture with a unique COM segment: different bytes, still a valid JPEG."""
    comment = f"mammothbox bench {n} {uuid.uuid4()}".encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return jpeg[:2] + segment + jpeg[2:]


async def run_level(
    url: str, concurrency: int, seconds: float, bases: list[bytes], counter: list[int]
) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                counter[0] += 1
                body = distinct(bases[counter[0] % len(bases)], counter[0])
                form = aiohttp.FormData()
                form.add_field("files[]", body, filename="photo.jpg", content_type="image/jpeg")
                form.add_field("owner", "bench")
                start = time.perf_counter()
                async with session.post(f"{url}/api/v1/ingest", data=form) as response:
                    await response.read()
                    if response.status == 202:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies), latencies, errors


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1] * 1000 if len(values) > 1 else 0


class _Sink(BaseHTTPRequestHandler):
    """Takes OTLP/HTTP exports and drops them (an empty message is a valid answer)."""

    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Sink.received += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


TRACING_MODES = {
    "sampled 1.0, exported": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                              "OTEL_TRACES_SAMPLER_ARG": "1.0"},
    "default 0.1, exported": {},
    "disabled": {"OTEL_SDK_DISABLED": "true"},
}  # fmt: skip


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(150):
            try:
                async with session.get(f"{url}/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"no gateway ready at {url}")


async def tracing_cost(env: dict[str, str], concurrency: int, seconds: float, rounds: int) -> None:
    """Ingest rate with tracing at 1.0, at the default, and off (see the module docstring)."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    base = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    gateways = {}
    try:
        for n, (mode, extra) in enumerate(TRACING_MODES.items()):
            port = 18001 + n
            mode_env = {**base, "HTTP_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                        "OTEL_SERVICE_NAME": f"gateway-{n}", **extra}  # fmt: skip
            gateways[mode] = (
                subprocess.Popen(
                    [sys.executable, "-m", "gateway"], env=mode_env, stdout=subprocess.DEVNULL
                ),
                f"http://127.0.0.1:{port}",
            )
        for _, url in gateways.values():
            await wait_ready(url)
        bases = base_jpegs(8)
        counter = [0]
        for _, url in gateways.values():
            await run_level(url, 4, 2.0, bases, counter)  # warm up
        done = {mode: 0 for mode in gateways}
        spent = {mode: 0.0 for mode in gateways}
        print(f"cores: {os.cpu_count()}, concurrency {concurrency}, {rounds} rounds of "
              f"{seconds:g} s per mode")  # fmt: skip
        for _ in range(rounds):
            for mode, (_, url) in gateways.items():
                started = time.perf_counter()
                count, _, errors = await run_level(url, concurrency, seconds, bases, counter)
                spent[mode] += time.perf_counter() - started
                done[mode] += count
                assert errors == 0, f"{errors} errors with tracing {mode}"
        off = done["disabled"] / spent["disabled"]
        print(f"{'tracing':<24} {'uploads/s':>10} {'of disabled':>12}")
        for mode in gateways:
            rate = done[mode] / spent[mode]
            print(f"{mode:<24} {rate:>10.1f} {rate / off:>11.1%}")
        print(f"OTLP exports received: {_Sink.received}")
    finally:
        for process, _ in gateways.values():
            process.terminate()
            process.wait()
        sink.shutdown()


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time (user and system) of a process and its children so far."""
    family = [process, *process.children(recursive=True)]
    return sum(p.cpu_times().user + p.cpu_times().system for p in family)


async def storage_cost(env: dict[str, str], levels: list[int], seconds: float, rounds: int) -> None:
    """The same load on a gateway on a folder and one on S3, in turn (module docstring)."""
    from tests.s3server import s3_server

    with (
        tempfile.TemporaryDirectory(prefix="mb-bench-s3-") as tmp,
        s3_server(Path(tmp) / "s3.log") as server,
    ):
        s3_env = {**env, **server.env(prefix="bench"), "HTTP_PORT": "18001",
                  "STORAGE_SCRATCH_DIR": str(Path(tmp) / "scratch")}  # fmt: skip
        async with gateway_process(env) as fs, gateway_process(s3_env) as s3:
            gateways = {"filesystem": fs, "s3": s3}
            bases = base_jpegs(8)
            counter = [0]
            for url, _ in gateways.values():
                await run_level(url, 4, 2.0, bases, counter)  # warm up
            size = statistics.mean(len(b) for b in bases) / 1000
            print(f"upload size: {size:.0f} kB, cores: {os.cpu_count()}, "
                  f"{rounds} rounds of {seconds:g} s per backend")  # fmt: skip
            print(f"{'conc':>5} {'backend':<11} {'uploads/s':>10} {'p50 ms':>8} {'p95 ms':>8} "
                  f"{'errors':>6} {'cpu ms/upload':>14} {'of fs':>7}")  # fmt: skip
            for concurrency in levels:
                done = dict.fromkeys(gateways, 0)
                spent = dict.fromkeys(gateways, 0.0)
                cpu = dict.fromkeys(gateways, 0.0)
                errors = dict.fromkeys(gateways, 0)
                latencies: dict[str, list[float]] = {name: [] for name in gateways}
                for _ in range(rounds):
                    for name, (url, process) in gateways.items():
                        info = psutil.Process(process.pid)
                        cpu_before, started = cpu_seconds(info), time.perf_counter()
                        count, lat, failed = await run_level(
                            url, concurrency, seconds, bases, counter
                        )
                        spent[name] += time.perf_counter() - started
                        cpu[name] += cpu_seconds(info) - cpu_before
                        done[name] += count
                        errors[name] += failed
                        latencies[name] += lat
                per_upload = {name: 1000 * cpu[name] / max(done[name], 1) for name in gateways}
                for name in gateways:
                    print(
                        f"{concurrency:>5} {name:<11} {done[name] / spent[name]:>10.1f} "
                        f"{pct(latencies[name], 50):>8.1f} {pct(latencies[name], 95):>8.1f} "
                        f"{errors[name]:>6} {per_upload[name]:>14.2f} "
                        f"{per_upload[name] / per_upload['filesystem']:>6.2f}x",
                        flush=True,
                    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running gateway; default: start one")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tracing", action="store_true", help="the cost of tracing")
    parser.add_argument("--rounds", type=int, default=3, help="with --tracing or --storage s3")
    parser.add_argument(
        "--storage", choices=["filesystem", "s3"], default="filesystem",
        help="s3: compare a gateway on S3 with one on a folder, side by side",
    )  # fmt: skip
    args = parser.parse_args()
    if (args.tracing or args.storage == "s3") and args.url:
        parser.error("--tracing and --storage s3 start their own gateways")

    if args.url:
        await load(args.url, None, args.concurrency, args.seconds)
        return
    async with bench_deployment() as env:
        if args.tracing:
            await tracing_cost(env, args.concurrency[0], args.seconds, args.rounds)
            return
        if args.storage == "s3":
            await storage_cost(env, args.concurrency, args.seconds, args.rounds)
            return
        async with gateway_process(env) as (url, gateway):
            await load(url, gateway, args.concurrency, args.seconds)


@contextlib.asynccontextmanager
async def bench_deployment() -> AsyncIterator[dict[str, str]]:
    """A fresh database (migrated), uuid-named exchange and queues and a storage folder: the
    environment of a gateway on them; all removed afterwards."""
    database_url = server_url()
    rabbitmq_url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    tag = uuid.uuid4().hex[:8]
    bench_db = f"mb_bench_{tag}"
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    storage = tempfile.mkdtemp(prefix="mb-bench-")
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"CREATE DATABASE {bench_db}")
    await admin.close()
    env = {
        **os.environ,
        "DATABASE_URL": database_url.rsplit("/", 1)[0] + f"/{bench_db}",
        "RABBITMQ_URL": rabbitmq_url,
        "BUS_EXCHANGE": f"bench-{tag}",
        "BUS_QUEUE_PREFIX": f"bench-{tag}.",
        "STORAGE_PATH": storage,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "18000",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "MIN_FREE_DISK_BYTES": "0",
    }
    try:
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/migrate.py")],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield env
    finally:
        await cleanup(rabbitmq_url, tag, admin_url, bench_db, storage)


@contextlib.asynccontextmanager
async def gateway_process(
    env: dict[str, str],
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m gateway` on the deployment, ready; its URL and process."""
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{env['HTTP_PORT']}"
        await wait_ready(url)
        yield url, gateway
    finally:
        gateway.terminate()
        gateway.wait()


async def load(
    url: str, gateway: subprocess.Popen[bytes] | None, levels: list[int], seconds: float
) -> None:
    process = psutil.Process(gateway.pid) if gateway else None

    def rss() -> float:
        """Resident memory of the gateway and its worker processes, in MB."""
        if process is None:
            return float("nan")
        family = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in family) / 2**20

    bases = base_jpegs(8)
    print(
        f"upload size: {statistics.mean(len(b) for b in bases) / 1000:.0f} kB, "
        f"cores: {os.cpu_count()}, seconds per level: {seconds}"
    )
    counter = [0]
    # Warm up connections, caches and the pool.
    await run_level(url, 4, 2.0, bases, counter)
    print(
        f"{'conc':>5} {'uploads/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'rss before':>11} {'rss after':>10}"
    )
    for concurrency in levels:
        rss_before = rss()
        started = time.perf_counter()
        done, latencies, errors = await run_level(url, concurrency, seconds, bases, counter)
        elapsed = time.perf_counter() - started
        rss_after = rss()
        print(
            f"{concurrency:>5} {done / elapsed:>10.0f} {pct(latencies, 50):>8.1f} "
            f"{pct(latencies, 95):>8.1f} {pct(latencies, 99):>8.1f} {errors:>6} "
            f"{rss_before:>9.0f}MB {rss_after:>8.0f}MB",
            flush=True,
        )


async def cleanup(rabbitmq_url: str, tag: str, admin_url: str, bench_db: str, storage: str) -> None:
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel()
    # Every queue the gateway declared (all the topology, not only what it feeds):
    # quorum queues left behind pile up on the broker and slow its restarts.
    for spec in queue_specs(f"bench-{tag}."):
        for name in (spec.name, spec.parking, *(spec.delay(i) for i in (1, 2, 3))):
            await channel.queue_delete(name)
    await channel.exchange_delete(f"bench-{tag}")
    await connection.close()
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {bench_db} WITH (FORCE)")
    await admin.close()
    subprocess.run(["rm", "-rf", storage], check=False)


if __name__ == "__main__":
    asyncio.run(main())
