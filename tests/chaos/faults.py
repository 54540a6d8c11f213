"""The faults the chaos driver injects into a running system, one at a time.

Each fault is an async function of the system that injects the fault, holds it while the
uploads keep coming, and clears it; it returns nothing. A killed process is not waited for:
supervisord starting it again (as Kubernetes would a new pod) is the recovery, which the
driver times from the moment the fault was cleared (the kill) until a new upload is done.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import psutil

from common.topology import queue_specs
from tests.chaos.load import Load
from tests.conftest import DATABASE_URL, RABBITMQ_URL
from tests.observability.harness import ROOT, System, wait_until

WORKERS = ("gateway", "embedder", "clusterer", "analyzer", "schemer")
HOLD_S = 3.0  # how long a fault that is held (broker down, disk full) lasts


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[System, Load], Coroutine[Any, Any, None]]


def pid_of(system: System, service: str) -> int | None:
    for line in system.supervise("status").stdout.splitlines():
        words = line.replace(",", " ").split()
        if words[:2] == [service, "RUNNING"] and "pid" in words:
            return int(words[words.index("pid") + 1])
    return None


def supervisorctl(system: System, *args: str) -> str:
    done = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "supervisorctl"),
            "-c",
            str(system.run_dir / "supervisord.conf"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout + done.stderr


def signalled(service: str, signum: signal.Signals) -> Fault:
    async def inject(system: System, _: Load) -> None:
        pid = pid_of(system, service)
        assert pid is not None, system.supervise("status").stdout
        os.kill(pid, signum)

    verb = "kill -9" if signum is signal.SIGKILL else "SIGTERM"
    return Fault(f"{verb} {service}", inject)


async def kill_decoder_worker(system: System, _: Load) -> None:
    """SIGKILL one of the embedder's decoder processes (children of its forkserver), as the
    OOM killer would; the pool tries the item it held once more on a fresh one."""
    pid = pid_of(system, "embedder")
    assert pid is not None
    embedder = psutil.Process(pid)

    def decoders() -> list[psutil.Process]:
        return [p for child in embedder.children() for p in child.children()]

    found = await wait_until(decoders, timeout=30, what="the embedder's decoder processes")
    found[0].kill()  # its slot starts a fresh one for its next item (the probe's, say)


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


async def restart_rabbitmq(system: System, _: Load) -> None:
    """`rabbitmqctl stop_app` / `start_app`: every connection dropped, the broker away."""
    assert urlsplit(RABBITMQ_URL).hostname in ("127.0.0.1", "localhost"), (
        "the chaos suite restarts RabbitMQ: it must be the local one"
    )
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    await asyncio.sleep(HOLD_S)
    await asyncio.to_thread(rabbitmqctl, "start_app")
    await asyncio.to_thread(rabbitmqctl, "await_startup")


def localdb(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "localdb.py"), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def crash_postgres(system: System, _: Load) -> None:
    """PostgreSQL stopped in immediate mode (a crash: no checkpoint, every backend killed),
    then started: it replays its WAL, refusing connections while it starts up."""
    local = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "localdb.py"), "url"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert urlsplit(DATABASE_URL).port == urlsplit(local).port, (
        "the chaos suite crashes PostgreSQL: run it on scripts/localdb.py's server"
    )
    await asyncio.to_thread(localdb, "stop", "immediate")
    await asyncio.sleep(HOLD_S)
    await asyncio.to_thread(localdb, "start")


async def fill_a_queue(system: System, load: Load) -> None:
    """The embedder stopped while images keep coming, until its queue is at its length limit
    and the broker refuses what the gateway's relay publishes (reject-publish); the events
    wait in the outbox. Then the embedder is started again."""
    prefix = system.env["BUS_QUEUE_PREFIX"]
    limit = int(system.env["BUS_QUEUE_MAX_LENGTH"])
    queue = next(s for s in queue_specs(prefix) if s.service == "embedder").name
    await asyncio.to_thread(supervisorctl, system, "stop", "embedder")
    load.add(limit * 2)  # most of them new images (the rest JSON or stored bytes again)
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()

        async def full() -> bool:
            declared = await channel.declare_queue(queue, passive=True)
            return (declared.declaration_result.message_count or 0) >= limit

        await wait_until(full, timeout=120, what=f"{queue} at its limit of {limit}")
        await asyncio.sleep(HOLD_S)  # the relay's publishes are refused meanwhile
    finally:
        await connection.close()
    out = await asyncio.to_thread(supervisorctl, system, "start", "embedder")
    assert "started" in out or "already" in out, out


async def fill_the_disk(system: System, load: Load) -> None:
    """Writes to files fail in the gateway and the embedder (RLIMIT_FSIZE of 0 set on them
    from outside: every write fails with EFBIG, the errno path ENOSPC takes too), while
    uploads keep coming; then the limit is lifted."""
    processes = []
    for service in ("gateway", "embedder"):
        pid = pid_of(system, service)
        assert pid is not None
        processes.append(psutil.Process(pid))
    refused = "503 storage cannot accept the upload now"
    refused_before = load.refusals[refused]
    saved = [(p.pid, resource.prlimit(p.pid, resource.RLIMIT_FSIZE)) for p in processes]
    try:
        for pid, (_, hard) in saved:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
        load.add(20)
        await wait_until(
            lambda: load.refusals[refused] > refused_before,
            timeout=60,
            what=f"an upload refused for want of disk (refusals: {dict(load.refusals)})",
        )
        await asyncio.sleep(HOLD_S)
    finally:
        for pid, limits in saved:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)


def faults() -> list[Fault]:
    return [
        *(signalled(s, signal.SIGKILL) for s in WORKERS),
        Fault("kill -9 a decoder process", kill_decoder_worker),
        *(signalled(s, signal.SIGTERM) for s in WORKERS),
        Fault("RabbitMQ stop_app/start_app", restart_rabbitmq),
        Fault("PostgreSQL crash and restart", crash_postgres),
        Fault("a full queue (reject-publish)", fill_a_queue),
        Fault("a full disk (writes fail)", fill_the_disk),
    ]
