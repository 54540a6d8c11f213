"""Schemathesis's stateful testing over the OpenAPI document (calls chained through the ids
earlier responses returned, links inferred from the response schemas) against a running
system with API keys and two owners: no sequence makes the gateway answer 5xx. Then what
stateful fuzzing never tries: every id Alice's calls returned, put in every route that takes
an id, asked for (and deleted) with Bob's key — 404 wherever Alice herself gets an answer,
and Alice's data still there afterwards."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck

from gateway.openapi import document
from tests.abuse.corpus import ALICE, BOB
from tests.abuse.test_corpus import logged_tracebacks, seed
from tests.observability.harness import System

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PATH_PARAMETER = re.compile(r"\{(\w+)\}")


def fuzz_statefully(base: str, key: str, examples: int) -> tuple[list[str], set[str], int]:
    """Failures (5xx other than 503/504), the ids seen in responses, and the calls made."""
    schema = schemathesis.openapi.from_dict(document())
    machine = schema.as_state_machine()
    failures: list[str] = []
    ids: set[str] = set()
    calls = [0]

    class Alice(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base, "headers": {"X-API-Key": key}, "timeout": 30}

        def after_call(self, response: Any, case: Any) -> None:
            calls[0] += 1
            if response.status_code >= 500 and response.status_code not in (503, 504):
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}:"
                    f" {response.text[:300]}"
                )
            if "json" in response.headers.get("Content-Type", ""):
                ids.update(UUID.findall(response.text))

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            pass  # the check is after_call's: no 5xx (conformance is tests/search's)

    Alice.run(
        settings=hypothesis.settings(
            max_examples=examples,
            stateful_step_count=8,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )
    return failures, ids, calls[0]


def id_routes() -> list[tuple[str, str]]:
    """(method, path) of every documented route with exactly one path parameter."""
    routes: list[tuple[str, str]] = []
    for path, operations in document()["paths"].items():
        if len(PATH_PARAMETER.findall(path)) == 1 and path.startswith("/api/"):
            routes.extend((method.upper(), path) for method in operations)
    return routes


def crawl(base: str, seeded: dict[str, str]) -> set[str]:
    """Every id in what Alice's views of her seeded data answer."""
    found = set(seeded.values())
    for path in (
        f"/api/v1/ingest/{seeded['job']}/status",
        f"/api/v1/ingest/{seeded['job']}/timeline",
        f"/api/v1/objects/{seeded['object']}",
        "/api/v1/clusters",
        "/api/v1/schemas",
        f"/api/v1/schemas/{seeded['schema']}",
        "/api/v1/collections/abuse/documents",
        "/api/v1/search?query=green",
        f"/api/v1/search?like={seeded['object']}",
    ):
        answer = requests.get(base + path, headers={"X-API-Key": ALICE}, timeout=30)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        found.update(UUID.findall(answer.text))
    return found


def replay(base: str, ids: set[str]) -> tuple[list[str], int]:
    """Each id in each one-id route: Bob must get 404 wherever Alice gets a 2xx. Reads first
    (with Alice's answer as the witness), then Bob's deletes, then Alice's reads again."""
    leaks: list[str] = []
    witnessed = 0
    session = requests.Session()

    def call(method: str, url: str, key: str) -> requests.Response:
        return session.request(method, url, headers={"X-API-Key": key}, timeout=30)

    routes = id_routes()
    readable: list[str] = []
    for method, path in routes:
        if method != "GET":
            continue
        for value in ids:
            url = base + PATH_PARAMETER.sub(value, path)
            if call("GET", url, ALICE).status_code // 100 != 2:
                continue
            witnessed += 1
            readable.append(url)
            answer = call("GET", url, BOB)
            if answer.status_code != 404:
                leaks.append(f"GET {url} as Bob -> {answer.status_code} {answer.text[:200]}")
    for method, path in routes:
        if method not in ("DELETE", "POST", "PATCH"):
            continue
        for value in ids:
            url = base + PATH_PARAMETER.sub(value, path)
            answer = session.request(
                method, url, headers={"X-API-Key": BOB}, json={"name": "bob was here"}, timeout=30
            )
            if answer.status_code // 100 == 2:
                leaks.append(f"{method} {url} as Bob -> {answer.status_code} {answer.text[:200]}")
    for url in readable:  # Bob's deletes and actions changed nothing of Alice's
        answer = call("GET", url, ALICE)
        if answer.status_code // 100 != 2:
            leaks.append(f"GET {url} as Alice after Bob's calls -> {answer.status_code}")
    return leaks, witnessed


async def test_stateful_fuzzing_finds_no_5xx_and_no_id_crosses_owners(
    abuse_system: System,
) -> None:
    base = abuse_system.base
    failures, ids, calls = await asyncio.to_thread(fuzz_statefully, base, ALICE, 40)
    seeded = await seed(abuse_system)  # after the fuzzing, which may delete what it finds
    print(f"\nstateful fuzzing: {calls} calls, {len(ids)} ids seen")
    assert calls >= 40
    assert failures == [], "\n".join(failures)
    ids |= await asyncio.to_thread(crawl, base, seeded)
    leaks, witnessed = await asyncio.to_thread(replay, base, ids)
    print(f"replayed {len(ids)} ids as Bob: {witnessed} reads Alice had")
    # The seed's upload, job, cluster and schema at least, through their routes.
    assert witnessed >= 6, witnessed
    assert leaks == [], "\n".join(leaks)
    tracebacks = logged_tracebacks(abuse_system)
    assert not tracebacks, "\n".join(tracebacks)
