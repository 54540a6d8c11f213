"""No secret reaches a log line, an error body or /health: a run of the five services with API
keys, an admin key, a Gemini key and a database password configured, through failures that
make every service talk (a refused Gemini key, a server error, wrong and missing API keys)."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import orjson

from tests.analyzer.fake_gemini import error
from tests.clusterer.conftest import colour_png
from tests.observability.conftest import finished, own_system, stages_settled
from tests.observability.harness import SERVICES


async def test_no_configured_secret_appears_in_any_log_line_or_response(
    tmp_path: Path, colour_models: Path
) -> None:
    writer = f"write-{uuid.uuid4().hex}"
    reader = f"read-{uuid.uuid4().hex}"
    admin = f"admin-{uuid.uuid4().hex}"
    keys = {"write key": writer, "read key": reader, "admin key": admin}
    async with own_system(
        tmp_path,
        colour_models,
        extra_env={
            "API_KEYS": f"{writer}:write:alice,{reader}:read:alice",
            "ADMIN_API_KEY": admin,
            "LOG_LEVEL": "DEBUG",
            "VLM_MAX_RETRIES": "1",
        },
    ) as system:
        # The VLM fails once with a server error, then refuses the key.
        system.gemini.script.extend([error(500), error(401)])
        secrets = {**system.secrets, **keys}
        answers: list[str] = []
        as_writer = {"X-API-Key": writer}
        as_admin = {"Authorization": f"Bearer {admin}"}
        async with aiohttp.ClientSession() as session:

            async def call(method: str, url: str, **kwargs: object) -> None:
                async with session.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
                    answers.append(
                        f"{response.status} {dict(response.headers)} {await response.text()}"
                    )

            form = aiohttp.FormData()
            form.add_field("files[]", colour_png((20, 200, 20), 7), filename="g.png")
            form.add_field("payload", orjson.dumps([{"k": 1}]).decode())
            async with session.post(
                f"{system.base}/api/v1/ingest", data=form, headers=as_writer
            ) as response:
                assert response.status == 202
                job = (await response.json())["job_id"]
            await finished(session, system.base, job, headers=as_writer)
            await stages_settled(session, system.base, job, headers=as_writer)
            for path in (f"/api/v1/ingest/{job}/status", f"/api/v1/ingest/{job}/timeline",
                         "/api/v1/search?query=green", "/api/v1/clusters"):  # fmt: skip
                await call("GET", system.base + path, headers={"X-API-Key": reader})
            for headers in ({}, {"X-API-Key": "wrong-" + writer[6:]}, {"X-API-Key": reader}):
                await call("GET", f"{system.base}/api/v1/admin/dlq", headers=headers)
                await call("POST", f"{system.base}/api/v1/ingest", headers=headers)
            await call("GET", f"{system.base}/api/v1/admin/dlq", headers=as_admin)
            await call("POST", f"{system.base}/api/v1/ingest", headers=as_writer, data=b"{bad")
            for service in SERVICES:
                for path in ("/health", "/ready", "/live", "/metrics"):
                    await call("GET", system.url(service, path))
                    await call("GET", system.url(service, path), headers=as_admin)
        logs = {service: system.log(service) for service in SERVICES}
    assert any("refused the API key" in text for text in logs.values())  # the 401 was met
    assert all(logs.values()), "every service logged something"
    for name, secret in secrets.items():
        for service, text in logs.items():
            assert secret not in text, f"the {name} is in the {service}'s log"
        for answer in answers:
            assert secret not in answer, f"the {name} is in a response: {answer[:300]}"
