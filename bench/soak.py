#!/usr/bin/env python3
"""Soak: mixed load on the whole system for a long while, looking for leaks and drift.

Starts all five services under supervisord (as scripts/up.sh does, through the tests'
harness: a fresh database, uuid-named queues, the colour test model, a fake Gemini), then:

1. ceiling: --ceiling-seconds of closed-loop clients (--concurrency), each uploading an image
   and polling its status until done, then the next: uploads done per second;
2. soak: --minutes at half that rate, open loop (uploads started on a schedule, whatever the
   answers): 4 of 5 uploads an image, 1 a JSON document, each polled until done; a text
   search and a search by an earlier upload every second.

Every minute it prints uploads done/s, the p95 of upload-to-done and of the searches, the
errors, and each service's RSS (the process and its children: the embedder's decoders).
At the end: each service's RSS at the last minute against the first minute after
--warmup-minutes (target: within 10 %), the errors (target: 0) and the p95 drift.

    .venv/bin/python bench/soak.py                     # 30 minutes, 5 of warm-up
    .venv/bin/python bench/soak.py --minutes 3 --warmup-minutes 1
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path = [p for p in sys.path if not p.endswith("/bench")]
sys.path.insert(0, str(ROOT))

import aiohttp
import asyncpg
import orjson
import psutil

from bench.benchdb import on_server, server_url
from common.migrate import migrate
from mammoth_export.colour_model import export_colour_model
from tests.chaos.faults import pid_of
from tests.clusterer.conftest import colour_png
from tests.observability.harness import SERVICES, System, running_system

TERMINAL = {"done", "failed", "partial"}


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20)[-1]


class Traffic:
    """Uploads followed until done, searches; what each took and what went wrong."""

    def __init__(self, system: System, session: aiohttp.ClientSession) -> None:
        self.system = system
        self.session = session
        self.n = 0
        self.done: list[float] = []  # upload-to-done seconds, this minute
        self.searches: list[float] = []
        self.errors: Counter[str] = Counter()
        self.uploads: list[str] = []  # ids, for searches by example
        self.in_flight = 0

    async def upload_until_done(self) -> None:
        self.n += 1
        n = self.n
        form = aiohttp.FormData()
        if n % 5 == 0:
            form.add_field("payload", orjson.dumps([{"n": n, "name": f"doc {n}"}]).decode())
            form.add_field("collection", "soak_docs")
        else:
            colour = ((n * 37) % 256, (n * 97) % 256, (n * 29) % 256)
            form.add_field("files[]", colour_png(colour, seed=n), filename=f"{n}.png")
        self.in_flight += 1
        began = time.monotonic()
        try:
            async with self.session.post(f"{self.system.base}/api/v1/ingest", data=form) as r:
                body = await r.json()
                if r.status != 202:
                    self.errors[f"ingest {r.status}"] += 1
                    return
            job = body["job_id"]
            while True:
                await asyncio.sleep(0.25)
                async with self.session.get(f"{self.system.base}/api/v1/ingest/{job}/status") as r:
                    status = await r.json()
                    if r.status != 200:
                        self.errors[f"status {r.status}"] += 1
                        return
                if status["status"] in TERMINAL:
                    break
            if status["status"] != "done":
                self.errors[f"job {status['status']}"] += 1
                return
            self.done.append(time.monotonic() - began)
            if n % 5:
                self.uploads.append(status["uploads"][0]["system_id"])
        except (aiohttp.ClientError, TimeoutError) as error:
            self.errors[type(error).__name__] += 1
        finally:
            self.in_flight -= 1

    async def search(self) -> None:
        params = {"query": "red"} if not self.uploads or self.n % 2 else {"like": self.uploads[-1]}
        began = time.monotonic()
        try:
            async with self.session.get(f"{self.system.base}/api/v1/search", params=params) as r:
                await r.read()
                if r.status != 200:
                    self.errors[f"search {r.status}"] += 1
                    return
            self.searches.append(time.monotonic() - began)
        except (aiohttp.ClientError, TimeoutError) as error:
            self.errors[type(error).__name__] += 1


def rss_mb(system: System) -> dict[str, float]:
    out = {}
    for service in SERVICES:
        pid = pid_of(system, service)
        if pid is None:
            out[service] = float("nan")
            continue
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        out[service] = total / 1e6
    return out


async def ceiling(traffic: Traffic, seconds: float, concurrency: int) -> float:
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            await traffic.upload_until_done()

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    rate = len(traffic.done) / (time.monotonic() - began)
    traffic.done.clear()
    return rate


async def soak(traffic: Traffic, system: System, rate: float, minutes: int, warmup: int) -> int:
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    print(
        "| minute | done/s | p95 upload→done s | p95 search ms | errors | in flight | "
        + " | ".join(f"{s} MB" for s in SERVICES)
        + " |"
    )
    print("|---:" * (6 + len(SERVICES)) + "|")
    start = time.monotonic()
    rows: list[tuple[float, float, dict[str, float]]] = []
    for minute in range(1, minutes + 1):
        traffic.done.clear()
        traffic.searches.clear()
        errors_before = sum(traffic.errors.values())
        minute_end = start + minute * 60
        next_upload = next_search = time.monotonic()
        while (now := time.monotonic()) < minute_end:
            if now >= next_upload:
                spawn(traffic.upload_until_done())
                next_upload += 1 / rate
            if now >= next_search:
                spawn(traffic.search())
                next_search += 1.0
            await asyncio.sleep(max(0.0, min(next_upload, next_search) - time.monotonic()))
        rss = rss_mb(system)
        done_p95 = p95(traffic.done)
        search_p95 = p95(traffic.searches) * 1000
        rows.append((done_p95, search_p95, rss))
        errors = sum(traffic.errors.values()) - errors_before
        print(
            f"| {minute} | {len(traffic.done) / 60:.1f} | {done_p95:.2f} | {search_p95:.0f} | "
            f"{errors} | {traffic.in_flight} | "
            + " | ".join(f"{rss[s]:.0f}" for s in SERVICES)
            + " |",
            flush=True,
        )
    await asyncio.gather(*tasks)
    first = min(warmup, len(rows) - 1)
    base, last = rows[first], rows[-1]
    print(f"\nRSS, minute {first + 1} -> minute {len(rows)} (target: within 10 %):")
    flat = True
    for service in SERVICES:
        change = (last[2][service] - base[2][service]) / base[2][service] * 100
        flat &= abs(change) <= 10
        print(f"  {service}: {base[2][service]:.0f} -> {last[2][service]:.0f} MB ({change:+.1f} %)")
    print(f"p95 upload->done {base[0]:.2f} -> {last[0]:.2f} s;", end=" ")
    print(f"p95 search {base[1]:.0f} -> {last[1]:.0f} ms")
    print(f"errors: {sum(traffic.errors.values())} {dict(traffic.errors)}")
    print("RSS flat:", "yes" if flat else "NO")
    return 0 if flat and not traffic.errors else 1


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--warmup-minutes", type=int, default=5)
    parser.add_argument("--ceiling-seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    server = server_url()
    template = f"soak_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(on_server(server, "postgres"))
    await admin.execute(f"CREATE DATABASE {template}")
    try:
        await migrate(on_server(server, template))
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            models = Path(tmp) / "models"
            export_colour_model(models / "colour")
            async with running_system(
                Path(tmp),
                models,
                database_url=server,
                template=template,
                rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/",
                extra_env={
                    "OTEL_SDK_DISABLED": "true",
                    "VLM_RATE_LIMIT_PER_MINUTE": "0",
                    "LOG_LEVEL": "WARNING",
                },
            ) as system:
                timeout = aiohttp.ClientTimeout(total=60)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    traffic = Traffic(system, session)
                    top = await ceiling(traffic, args.ceiling_seconds, args.concurrency)
                    print(
                        f"ceiling: {top:.1f} uploads done/s at concurrency {args.concurrency};"
                        f" soaking at {top / 2:.1f}/s for {args.minutes} min\n",
                        flush=True,
                    )
                    return await soak(traffic, system, top / 2, args.minutes, args.warmup_minutes)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {template} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
