"""Workers stop gracefully: SIGTERM under load to each worker of a running system (under
supervisord, which starts it again, as Kubernetes would a new pod): it stops taking work, says
not ready, finishes what it holds, exits 0 within SHUTDOWN_GRACE_SECONDS — and every upload
still ends done, each effect exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.analyzer.fake_gemini import Reply, answer
from tests.clusterer.conftest import colour_png
from tests.observability.conftest import finished, ingest, own_system, stages_settled
from tests.observability.harness import System, effect_counts, wait_until

GRACE = 10.0
WORKERS = ("embedder", "clusterer", "analyzer", "schemer")


def pid_of(system: System, service: str) -> int | None:
    status = system.supervise("status").stdout
    for line in status.splitlines():
        words = line.replace(",", " ").split()
        if words[:2] == [service, "RUNNING"] and "pid" in words:
            return int(words[words.index("pid") + 1])
    return None


class Load:
    """Uploads images and JSON documents one after another until stopped; the job ids."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.jobs: list[str] = []
        self.images = 0
        self.documents = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            n = 0
            while not self._stop.is_set():
                n += 1
                colour = ((n * 37) % 256, (n * 97) % 256, (n * 29) % 256)
                image = colour_png(colour, seed=n)
                self.jobs.append(
                    await ingest(session, self.system.base, file=(f"{n}.png", image, "image/png"))
                )
                self.images += 1
                if n % 4 == 0:
                    documents = [{"batch": n, "n": k, "name": f"doc {k}"} for k in range(10)]
                    self.jobs.append(
                        await ingest(
                            session,
                            self.system.base,
                            payload=orjson.dumps(documents).decode(),
                            collection="shutdown_docs",
                        )
                    )
                    self.documents += len(documents)
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()


async def in_flight(system: System, service: str) -> float:
    """The service's deliveries in flight now (its consumer_in_flight gauges summed)."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(system.url(service, "/metrics")) as response,
        ):
            text = await response.text()
    except (aiohttp.ClientError, OSError):
        return 0.0
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("consumer_in_flight{")
    )


async def sigterm(system: System, service: str, pid: int) -> tuple[float, bool]:
    """Send SIGTERM to the service; how long it took to exit, and whether /ready said no
    while it drained."""
    os.kill(pid, signal.SIGTERM)
    sent = time.monotonic()
    refused = False
    async with aiohttp.ClientSession() as session:
        while (
            Path(f"/proc/{pid}/status").exists()
            and "zombie" not in Path(f"/proc/{pid}/status").read_text()
        ):
            try:
                async with session.get(system.url(service, "/ready")) as response:
                    body = await response.json()
                    if response.status == 503 and body["checks"].get("accepting") is False:
                        refused = True
            except (aiohttp.ClientError, OSError):
                pass
            if time.monotonic() - sent > GRACE + 10:
                raise AssertionError(f"{service} did not exit within {GRACE + 10} s")
            await asyncio.sleep(0.05)
    return time.monotonic() - sent, refused


@pytest.mark.timeout(300)
async def test_each_worker_stops_gracefully_under_load_and_every_upload_ends_once(
    tmp_path: Path, colour_models: Path
) -> None:
    async with own_system(
        tmp_path,
        colour_models,
        # No VLM rate limit: a call waiting for its slot could outlast the grace (it would
        # then go back to the broker, which this test does not look at).
        extra_env={
            "SHUTDOWN_GRACE_SECONDS": str(GRACE),
            "OTEL_SDK_DISABLED": "true",
            "VLM_RATE_LIMIT_PER_MINUTE": "0",
            # Retries spaced as in production (1, 10, 60 s by default), not the tests' 0.2 s:
            # an analysis that overtakes its filing while the clusterer restarts waits for it.
            "BUS_RETRY_DELAYS": "1,3,8",
        },
    ) as system:
        # Each VLM answer takes a while: the analyzer always has work in flight.
        system.gemini.default = Reply(text=answer().text, delay=0.4)
        load = Load(system)
        loading = asyncio.create_task(load.run())
        stops: dict[str, list[tuple[float, bool]]] = {}
        try:
            for service in WORKERS:
                # Told to stop while it holds deliveries (a few tries: work comes and goes).
                for _ in range(3):
                    pid = pid_of(system, service)
                    assert pid is not None, system.supervise("status").stdout

                    async def busy(name: str = service) -> float:
                        return await in_flight(system, name)

                    await wait_until(
                        busy,
                        timeout=30,
                        interval=0.02,
                        what=f"{service} holding work",
                    )
                    stops.setdefault(service, []).append(await sigterm(system, service, pid))

                    def back(name: str = service) -> bool:
                        return pid_of(system, name) is not None

                    await wait_until(back, timeout=60, what=f"{service} running again")
                    if _held_work(system.log(service), service):
                        break
        finally:
            load.stop()
            await loading
        async with aiohttp.ClientSession() as session:
            for job in load.jobs:
                assert (await finished(session, system.base, job))["status"] == "done", job
                await stages_settled(session, system.base, job)
        supervisord_log = (system.run_dir / "supervisord.log").read_text()
        logs = {service: system.log(service) for service in WORKERS}
        conn = await asyncpg.connect(system.database_url)
        try:
            counts = await effect_counts(conn)
            dead = await conn.fetch("SELECT queue, error FROM dead_letters")
        finally:
            await conn.close()
    for service, attempts in stops.items():
        for seconds, _ in attempts:  # within the grace, and the interpreter's own exit
            assert seconds <= GRACE + 2, (service, seconds)
        exits = supervisord_log.count(f"exited: {service} (exit status 0; expected)")
        assert exits >= len(attempts), (service, supervisord_log[-2000:])
        assert f"{service} stopped" in logs[service]
        assert "grace period over" not in logs[service], service
        # It was holding deliveries when told to stop, and finished them first.
        assert _held_work(logs[service], service), logs[service][-3000:]
    # While the analyzer finished its VLM calls, its /ready said no.
    assert any(refused for _, refused in stops["analyzer"]), stops["analyzer"]
    result: dict[str, Any] = dict(counts)
    images = result["images"]
    assert images == load.images
    # Every effect once: one embedding, one filing (member counts are exact), one analysis.
    assert result["clustered"] == result["embeddings"] == result["analysed"] == images, result
    assert result["members"] == images, result
    assert result["documents"] == result["placed"] == result["json_uploads"] == load.documents
    assert result["dead_letters"] == 0, [dict(d) for d in dead]


def _held_work(log: str, service: str) -> bool:
    """Whether a stop of the service began with deliveries in flight (its draining line)."""
    for line in log.splitlines():
        if f'"{service} draining"' in line:
            entry = orjson.loads(line)
            if entry.get("in_flight", 0) > 0:
                return True
    return False
