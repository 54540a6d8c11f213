"""Every request of the hostile-input corpus (tests/abuse/corpus.py) against a running system
of all five services: each ends as a clean JSON 4xx, or accepted and then recorded (failed,
or done when it was harmless after all) — never a 5xx, never a traceback logged at error
level, and every service is still the same process at the end, ready. The tallies (tried /
clean 4xx / accepted then failed / accepted then done / 5xx) are printed by group."""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import orjson
from yarl import URL

from tests.abuse.corpus import ALICE, Case, RawCase, corpus, raw_cases
from tests.chaos.faults import pid_of
from tests.observability.harness import SERVICES, System, get_json, wait_until

TERMINAL = {"done", "failed", "partial"}


async def seed(system: System) -> dict[str, str]:
    """Alice's real ids for the corpus's placeholders: an upload, its job and cluster, and
    a JSON collection's schema."""
    headers = {"X-API-Key": ALICE}
    async with aiohttp.ClientSession(headers=headers) as session:
        form = aiohttp.FormData()
        form.add_field("files[]", _png(), filename="seed.png", content_type="image/png")
        form.add_field("payload", '[{"a": 1, "b": "two"}]')
        form.add_field("collection", "abuse")
        async with session.post(f"{system.base}/api/v1/ingest", data=form) as response:
            assert response.status == 202, await response.text()
            job = (await response.json())["job_id"]
        status = await _finished(session, system, job)
        assert status["status"] == "done", status
        image = next(u for u in status["uploads"] if u["kind"] == "image")
        obj = await get_json(session, f"{system.base}/api/v1/objects/{image['system_id']}")

        async def schema() -> Any:
            listed = await get_json(session, f"{system.base}/api/v1/schemas")
            return listed["schemas"][0]["id"] if listed["schemas"] else None

        schema_id = await wait_until(schema, timeout=30, what="the seed's schema")
    return {
        "object": image["system_id"],
        "job": job,
        "cluster": obj["cluster"]["id"],
        "schema": str(schema_id),
    }


def _png() -> bytes:
    from tests.abuse.corpus import png

    return png((24, 24), (30, 200, 30))


async def _finished(session: aiohttp.ClientSession, system: System, job: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        url = f"{system.base}/api/v1/ingest/{job}/status"
        async with session.get(url, headers={"X-API-Key": ALICE}) as response:
            assert response.status == 200, await response.text()
            status: dict[str, Any] = await response.json()
        return status if status["status"] in TERMINAL else None

    result: dict[str, Any] = await wait_until(check, timeout=90, what=f"job {job}")
    return result


async def run_case(
    session: aiohttp.ClientSession, system: System, case: Case, ids: dict[str, str]
) -> tuple[str, str]:
    """The outcome ("4xx", "failed", "done", "5xx", "unclean 4xx", "2xx") and a detail."""
    headers = dict(case.headers)
    if case.key == "alice":
        headers["X-API-Key"] = ALICE
    path = case.path
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    url = URL(system.base + path, encoded=True)
    async with session.request(
        case.method,
        url,
        data=None if case.body is None else io.BytesIO(case.body),
        headers=headers,
        skip_auto_headers=()
        if "Content-Type" in headers or case.body is None
        else ("Content-Type",),
    ) as response:
        text = await response.text(errors="replace")
        status = response.status
        if status == 202:
            job = orjson.loads(text)["job_id"]
            ended = await _finished(session, system, job)
            return ("done" if ended["status"] == "done" else "failed"), ended["status"]
        if 400 <= status < 500:
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError:
                return "unclean 4xx", f"{status} {text[:200]}"
            if not isinstance(body, dict) or "error" not in body or "request_id" not in body:
                return "unclean 4xx", f"{status} {text[:200]}"
            if case.status is not None and status != case.status:
                return "wrong 4xx", f"{status} (wanted {case.status}): {body['error']}"
            return "4xx", f"{status} {body['error'][:120]}"
        if status >= 500:
            return "5xx", f"{status} {text[:300]}"
        return f"{status // 100}xx", f"{status} {text[:200]}"


def send_raw(port: int, case: RawCase) -> tuple[str, str]:
    """Send the bytes, stop writing, and read what comes back: "4xx", "closed" (no answer,
    the connection closed), "5xx" or anything else as its status class."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(case.data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed early: what it answered is still read below
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    if not answer:
        return "closed", ""
    line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return "garbage", line[:200]
    status = int(parts[1])
    return ("4xx" if 400 <= status < 500 else f"{status // 100}xx"), line


async def test_the_hostile_corpus_gets_clean_answers_and_every_service_lives(
    abuse_system: System,
) -> None:
    system = abuse_system
    ids = await seed(system)
    pids = {s: pid_of(system, s) for s in SERVICES}
    cases = corpus()
    raws = raw_cases()
    assert len(cases) + len(raws) >= 150
    tallies: dict[str, Counter[str]] = defaultdict(Counter)
    wrong: list[str] = []
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for case in cases:
            outcome, detail = await run_case(session, system, case, ids)
            tallies[case.group][outcome] += 1
            if outcome not in case.expect:
                wrong.append(f"[{case.group}] {case.name}: {outcome} {detail}")
    for raw in raws:
        outcome, detail = await asyncio.to_thread(send_raw, system.ports["gateway"], raw)
        tallies[raw.group][outcome] += 1
        if outcome not in ("4xx", "closed"):
            wrong.append(f"[{raw.group}] {raw.name}: {outcome} {detail}")
    _print_tallies(tallies, time.monotonic() - started)
    assert not wrong, "\n".join(wrong)
    # Every service is the process it was, and ready.
    assert {s: pid_of(system, s) for s in SERVICES} == pids, system.supervise("status").stdout
    async with aiohttp.ClientSession() as session:
        for service in SERVICES:
            async with session.get(system.url(service, "/ready")) as response:
                assert response.status == 200, (service, await response.text())
    tracebacks = logged_tracebacks(system)
    assert not tracebacks, "\n".join(tracebacks)


def logged_tracebacks(system: System) -> list[str]:
    """Lines any service logged at error level with a traceback since the system started."""
    return [
        f"{service}: {line[:400]}"
        for service in SERVICES
        for line in system.log(service).splitlines()
        if _error_with_traceback(line)
    ]


def _error_with_traceback(line: str) -> bool:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "Traceback" in line
    if not isinstance(entry, dict):
        return False
    return entry.get("level") in ("error", "critical") and (
        "exception" in entry or "Traceback" in str(entry)
    )


def _print_tallies(tallies: dict[str, Counter[str]], seconds: float) -> None:
    columns = ("4xx", "closed", "failed", "done", "5xx")
    print(f"\nhostile corpus ({seconds:.0f} s)")
    print(
        "| group | tried | clean 4xx | closed | accepted, failed | accepted, done | 5xx | other |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total: Counter[str] = Counter()
    for group, counts in tallies.items():
        total.update(counts)
        other = sum(v for k, v in counts.items() if k not in columns)
        cells = " | ".join(str(counts[c]) for c in columns)
        print(f"| {group} | {sum(counts.values())} | {cells} | {other} |")
    other = sum(v for k, v in total.items() if k not in columns)
    cells = " | ".join(str(total[c]) for c in columns)
    print(f"| all | {sum(total.values())} | {cells} | {other} |")
