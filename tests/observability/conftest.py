"""One running system for the observability tests, and one small run through it.

The system listens on the ports scripts/up.sh uses (8000 for the gateway, 8081-8084 for the
workers) without API keys, as a newcomer's machine does, so the troubleshooting guide's
commands run exactly as typed. The run: an image, a JSON document, the same image again (a
later upload of stored content), an image that cannot be decoded, and searches.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from tests.clusterer.conftest import colour_models, colour_png  # noqa: F401
from tests.conftest import DATABASE_URL, RABBITMQ_URL, TEMPLATE_DB
from tests.monitoring.prom import render_config, start_prometheus
from tests.observability.harness import (
    DEFAULT_PORTS,
    ROOT,
    System,
    get_json,
    running_system,
    wait_until,
)
from tests.ports import free_port

TERMINAL = {"done", "failed", "partial"}


def own_system(tmp: Path, models: Path, **options: Any) -> AbstractAsyncContextManager[System]:
    """A running system of the test's own on this run's database server and broker."""
    return running_system(
        tmp,
        models,
        database_url=DATABASE_URL,
        template=TEMPLATE_DB,
        rabbitmq_url=RABBITMQ_URL,
        **options,
    )


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def system(
    tmp_path_factory: pytest.TempPathFactory,
    colour_models: Path,  # noqa: F811
) -> AsyncIterator[System]:
    beside = bool(os.environ.get("OBS_FREE_PORTS"))
    async with own_system(
        tmp_path_factory.mktemp("system"),
        colour_models,
        # As scripts/up.sh runs it: its ports and its run dir (.run: supervisord's config and
        # the logs the guide tails), so nothing else may be running there. OBS_FREE_PORTS=1
        # runs beside such a system instead (the guide's commands then miss it: that test fails).
        ports=None if beside else DEFAULT_PORTS,
        run_dir=None if beside else ROOT / ".run",
    ) as running:
        yield running


@pytest.fixture(scope="package")
def prometheus(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping every service each second, with the project's rules; its
    base URL. Started before the run (the workload asks for it), so the run is in its data."""
    tmp = tmp_path_factory.mktemp("prometheus")
    targets = {s: f"127.0.0.1:{port}" for s, port in system.ports.items()}
    config = tmp / "prometheus.yml"
    config.write_text(render_config(targets, "1s"))
    with start_prometheus(config, tmp, free_port()) as url:
        yield url


@dataclass(frozen=True)
class Workload:
    image_job: str
    json_job: str
    again_job: str  # the same image bytes as image_job, uploaded later
    broken_job: str
    image_upload: str
    again_upload: str


async def ingest(session: aiohttp.ClientSession, base: str, **parts: Any) -> str:
    form = aiohttp.FormData()
    for name, value in parts.items():
        if isinstance(value, tuple):
            filename, data, mime = value
            form.add_field("files[]", data, filename=filename, content_type=mime)
        else:
            form.add_field(name, value)
    async with session.post(f"{base}/api/v1/ingest", data=form) as response:
        body = await response.json()
        assert response.status == 202, body
        return str(body["job_id"])


async def finished(
    session: aiohttp.ClientSession, base: str, job: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status: dict[str, Any] = await get_json(
            session, f"{base}/api/v1/ingest/{job}/status", headers=headers or {}
        )
        return status if status["status"] in TERMINAL else None

    result: dict[str, Any] = await wait_until(check, timeout=90, what=f"job {job} to finish")
    return result


async def stages_settled(
    session: aiohttp.ClientSession, base: str, job: str, headers: dict[str, str] | None = None
) -> None:
    """Until no stage of the job is pending, running or retrying (the analysis included)."""

    async def check() -> bool:
        timeline = await get_json(
            session, f"{base}/api/v1/ingest/{job}/timeline", headers=headers or {}
        )
        return all(
            s["outcome"] in ("ok", "failed", "skipped")
            for upload in timeline["uploads"]
            for s in upload["stages"]
        )

    await wait_until(check, timeout=90, what=f"every stage of job {job}")


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def workload(system: System, prometheus: str) -> Workload:
    base = system.base
    image = colour_png((200, 30, 30), seed=1)
    async with aiohttp.ClientSession() as session:
        image_job = await ingest(session, base, file=("red.png", image, "image/png"))
        json_job = await ingest(
            session,
            base,
            payload=orjson.dumps(
                [{"name": "sample", "size": 3}, {"name": "other", "size": 5}]
            ).decode(),
            collection="obs_samples",
        )
        for job in (image_job, json_job):
            assert (await finished(session, base, job))["status"] == "done"
        await stages_settled(session, base, image_job)
        again_job = await ingest(session, base, file=("red-again.png", image, "image/png"))
        broken = image[:200]  # a PNG cut short: accepted by type, refused by the decoder
        broken_job = await ingest(session, base, file=("cut.png", broken, "image/png"))
        for job in (again_job, broken_job):
            await finished(session, base, job)
            await stages_settled(session, base, job)
        for query in ("red", "blue"):
            await get_json(session, f"{base}/api/v1/search", params={"query": query})
        image_status = await get_json(session, f"{base}/api/v1/ingest/{image_job}/status")
        like = image_status["uploads"][0]["system_id"]
        await get_json(session, f"{base}/api/v1/search", params={"like": like})
        form = aiohttp.FormData()
        form.add_field("image", colour_png((30, 30, 200), seed=5), filename="q.png")
        async with session.post(f"{base}/api/v1/search", data=form) as response:
            assert response.status == 200, await response.text()
        again_status = await get_json(session, f"{base}/api/v1/ingest/{again_job}/status")
    return Workload(
        image_job,
        json_job,
        again_job,
        broken_job,
        image_status["uploads"][0]["system_id"],
        again_status["uploads"][0]["system_id"],
    )
