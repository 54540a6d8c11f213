"""Uploads keep coming while the driver injects one fault after another into a running
system of all five services — kill -9 and SIGTERM of each, kill -9 of a decoder process, a
RabbitMQ restart, a PostgreSQL crash, a queue at its length limit, a disk that refuses
writes — and at the end, from the database, the broker and the store: every acknowledged
upload done exactly once, none lost, none stuck, no orphan object or temp file after a
sweep with an age bound of 0, and every cluster's count and centroid equal to a rebuild from
its members. The recovery time of each fault is printed.

CHAOS_PROFILE=ci (the default, what .ci/run runs): 12 uploads per fault, 15 faults, about 360 uploads;
CHAOS_PROFILE=long (releases): 32 uploads per fault, each fault twice, about 1,300 uploads.
    scripts/test.sh tests/chaos -s        # alone, with the recovery table
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest

from common.topology import queue_specs
from tests.chaos.faults import faults, pid_of
from tests.chaos.load import DOCUMENTS_PER_UPLOAD, Load, Upload, send
from tests.clusterer.test_admin import assert_centroid_is_mean
from tests.conftest import RABBITMQ_URL
from tests.observability.conftest import finished, own_system, stages_settled
from tests.observability.harness import ROOT, SERVICES, System, effect_counts, wait_until

PROFILES = {"ci": (12, 1), "long": (32, 2)}  # uploads per fault, rounds of every fault
QUEUE_LIMIT = 40


async def probe(load: Load, session: aiohttp.ClientSession) -> float:
    """A fresh image and a fresh JSON upload, sent until acknowledged and followed until
    every stage of both is done (embedding, filing, analysis, the schemer's row): when."""
    fresh = load.add(5, queue=False)  # one of five is a JSON upload (Load.add's mix)
    probes = [
        next(u for u in fresh if u.kind == "json"),
        next(u for u in fresh if u.kind == "image" and u.n % 7 != 3),  # new bytes
    ]
    for upload in probes:
        while upload.job is None:
            outcome = await send(session, load.base, upload)
            if outcome.startswith("job:"):
                upload.job = outcome[4:]
            else:
                await asyncio.sleep(0.1)
        status = await finished(session, load.base, upload.job)
        assert status["status"] == "done", status
        await stages_settled(session, load.base, upload.job)
    for upload in fresh:  # the others are sent by the load's clients
        if upload not in probes:
            load.enqueue(upload)
    return time.monotonic()


def python(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=system.env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.chaos
@pytest.mark.timeout(1800)
async def test_every_acknowledged_upload_is_done_once_through_every_fault(
    tmp_path: Path, colour_models: Path
) -> None:
    per_fault, rounds = PROFILES[os.environ.get("CHAOS_PROFILE", "ci")]
    async with own_system(
        tmp_path,
        colour_models,
        extra_env={
            "BUS_RETRY_DELAYS": "1,2,5",
            "BUS_QUEUE_MAX_LENGTH": str(QUEUE_LIMIT),
            "SHUTDOWN_GRACE_SECONDS": "10",
            "OTEL_SDK_DISABLED": "true",
            "VLM_RATE_LIMIT_PER_MINUTE": "0",
        },
    ) as system:
        load = Load(system.base)
        loading = asyncio.create_task(load.run())
        recoveries: list[tuple[str, float, float]] = []
        try:
            async with aiohttp.ClientSession() as session:
                await probe(load, session)  # the system works before the first fault
                for fault in faults() * rounds:
                    # Half the batch before the fault (a third of it in when it strikes),
                    # the other half sent while it lasts and while the system recovers.
                    batch = load.add(per_fault // 2)

                    def started(b: list[Upload] = batch) -> bool:
                        return sum(u.job is not None for u in b) >= len(b) // 3

                    await wait_until(
                        started,
                        timeout=120,
                        what=f"uploads before {fault.name}",
                    )
                    began = time.monotonic()
                    injecting = asyncio.create_task(fault.inject(system, load))
                    await asyncio.sleep(0.1)
                    load.add(per_fault - per_fault // 2)
                    await injecting
                    cleared = time.monotonic()
                    recoveries.append(
                        (fault.name, cleared - began, await probe(load, session) - cleared)
                    )
                    for service in SERVICES:  # what was killed came back
                        await wait_until(partial(pid_of, system, service), timeout=60)
                    print(
                        f"{fault.name}: held {cleared - began:.1f} s, recovered in {recoveries[-1][2]:.1f} s"
                    )
                await load.drained(timeout=300)
        finally:
            loading.cancel()
        await _check_everything_done_once(system, load)
        await _check_store_and_bus(system)
    _report(load, recoveries)
    unexpected = {k: v for k, v in load.refusals.items() if k[0] == "5" and not k.startswith("503")}
    assert not unexpected, unexpected


async def _check_everything_done_once(system: System, load: Load) -> None:
    async with aiohttp.ClientSession() as session:
        for upload in load.uploads:
            assert upload.job is not None
            status = await finished(session, system.base, upload.job)
            assert status["status"] == "done", (upload.n, upload.kind, status)
    # Judged by the state, not the timeline: the stage log is observability, and a report a
    # killed process had not written yet is lost (common/stage_log.py), so a stage it
    # finished may still read "running" there. The analysis is checked below.
    images = {u.image for u in load.uploads if u.kind == "image"}
    image_requests = sum(u.kind == "image" for u in load.uploads)
    documents = DOCUMENTS_PER_UPLOAD * sum(u.kind == "json" for u in load.uploads)
    assert len({u.job for u in load.uploads}) == len(load.uploads)  # a job per key
    conn = await asyncpg.connect(system.database_url)
    try:
        counts = await effect_counts(conn)
        dead = [dict(r) for r in await conn.fetch("SELECT queue, error FROM dead_letters")]
        clusters = [r["id"] for r in await conn.fetch("SELECT id FROM clusters")]
        for cluster in clusters:  # the kept count and centroid equal a rebuild from members
            await assert_centroid_is_mean(conn, cluster)
    finally:
        await conn.close()
    assert counts["jobs"] == len(load.uploads), counts
    assert counts["image_uploads"] == image_requests, counts
    assert counts["images"] == len(images), counts
    # Every effect once: one embedding, one filing (member counts exact), one analysis.
    assert counts["clustered"] == counts["embeddings"] == counts["analysed"] == len(images), counts
    assert counts["members"] == len(images), counts
    assert counts["json_uploads"] == counts["documents"] == counts["placed"] == documents, counts
    assert counts["dead_letters"] == 0, dead
    assert counts["unsent"] == 0, counts


async def _check_store_and_bus(system: System) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        names = [
            name
            for spec in queue_specs(system.env["BUS_QUEUE_PREFIX"])
            for name in (spec.name, spec.parking, *(spec.delay(i) for i in (1, 2, 3)))
        ]

        async def waiting() -> dict[str, int]:
            counts = {}
            for name in names:
                declared = await channel.declare_queue(name, passive=True)
                counts[name] = declared.declaration_result.message_count
            return {name: count for name, count in counts.items() if count}

        # Off the critical path a message may still be on its way when every upload is
        # done (a media.analyzed that came before its content was filed waits out a retry
        # tier): every queue must be empty once that settles, and stay so.
        async def settled() -> bool:
            return not await waiting()

        await wait_until(settled, timeout=30, what="every queue to empty")
        await asyncio.sleep(1.0)
        assert await waiting() == {}
    finally:
        await connection.close()
    swept = python(system, "-m", "gateway.sweep", "--min-age", "0")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    print("sweep with an age bound of 0:", swept.stdout.strip())
    verified = python(system, str(ROOT / "scripts" / "verify_store.py"))
    report: dict[str, Any] = orjson.loads(verified.stdout.splitlines()[-1])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert report["rows_without_bytes"] == [], report
    assert report["objects_without_rows"] == [], report
    assert report["temp_files"] == 0, report


def _report(load: Load, recoveries: list[tuple[str, float, float]]) -> None:
    print(f"\n{len(load.uploads)} uploads, {sum(u.tries for u in load.uploads)} tries")
    print("| fault | held s | recovered in s |\n|---|---:|---:|")
    for name, held, recovered in recoveries:
        print(f"| {name} | {held:.1f} | {recovered:.1f} |")
    print("refused before acknowledged:", dict(load.refusals))
