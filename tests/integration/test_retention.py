"""Retention through the real gateway: the dry run lists exactly what the run then deletes,
the most specific rule decides, the scheduled job only counts until it is told to delete."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from common.db import open_pool
from common.settings import describe_error
from gateway.repo.retention import list_due
from gateway.retention import EVERYONE, Retention
from gateway.retention_policy import RetentionPolicy, parse_rules
from gateway.settings import GatewaySettings
from mammoth_export.colour_model import COLOURS
from schemer.deps import SchemerDeps
from tests.clusterer.conftest import colour_png, wait_for
from tests.clusterer.test_pipeline import form
from tests.conftest import BusNames, service_env
from tests.integration.conftest import Gateway
from tests.schemer.conftest import (  # noqa: F401 (fixtures)
    schemer,
    schemer_settings,
    start_schemer,
    wait_job,
)

KEYS = [
    "alice-key-0123456789:write:alice",
    "bob-key-0123456789:write:bob",
    "root-key-0123456789:admin",
    "bobadmin-key-0123456789:admin:bob",
]
ALICE = {"Authorization": "Bearer alice-key-0123456789"}
BOB = {"Authorization": "Bearer bob-key-0123456789"}
ROOT = {"Authorization": "Bearer root-key-0123456789"}
BOB_ADMIN = {"Authorization": "Bearer bobadmin-key-0123456789"}
# Images 5 days, Alice's uploads forever, anything in a collection "logs" 1 day, else 30.
POLICY: dict[str, Any] = {
    "retention_days": 30,
    "retention_rules": ["kind:image=5", "owner:alice=0", "collection:logs=1"],
}


async def send_image(gw: Gateway, headers: dict[str, str], seed: int) -> str:
    picture = colour_png(COLOURS["red"], seed=seed)
    response = await gw.client.post(
        "/api/v1/ingest", data=form((f"{seed}.png", picture)), headers=headers
    )
    assert response.status == 202, await response.text()
    [upload_id] = (await response.json())["system_ids"]
    return str(upload_id)


async def send_json(gw: Gateway, headers: dict[str, str], document: Any, **params: str) -> str:
    response = await gw.client.post("/api/v1/ingest", json=document, params=params, headers=headers)
    assert response.status == 202, await response.text()
    [upload_id] = (await response.json())["system_ids"]
    return str(upload_id)


async def age(db: asyncpg.Connection, upload_id: str, days: float, now: datetime) -> None:
    await db.execute(
        "UPDATE uploads SET created_at = $2 WHERE id = $1",
        uuid.UUID(upload_id),
        now - timedelta(days=days),
    )


async def listing(gw: Gateway, headers: dict[str, str], **params: str) -> dict[str, Any]:
    response = await gw.client.get("/api/v1/admin/retention", params=params, headers=headers)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def every_due(gw: Gateway, headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
    """The whole listing, one upload per page: the pages join up without gaps or repeats."""
    found: list[dict[str, Any]] = []
    after: dict[str, str] = {}
    while True:
        page = await listing(gw, headers, limit="1", **params, **after)
        found += page["uploads"]
        if page["next"] is None:
            return found
        after = {"after": page["next"]}


async def uploads_left(db: asyncpg.Connection) -> set[str]:
    return {str(r["id"]) for r in await db.fetch("SELECT id FROM uploads")}


async def deleted_by_retention(gw: Gateway) -> float:
    text = await (await gw.client.get("/metrics")).text()
    found = re.search(r'^uploads_deleted_total\{reason="retention"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_the_dry_run_lists_exactly_what_the_run_then_deletes(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]],
    schemer: SchemerDeps,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    async with start_gateway(api_keys=KEYS, **POLICY) as gw:
        now = datetime.now(UTC)
        alice_image = await send_image(gw, ALICE, 1)
        bob_old_image = await send_image(gw, BOB, 2)
        bob_new_image = await send_image(gw, BOB, 3)
        bob_json = await send_json(gw, BOB, {"level": "info", "n": 1})
        bob_old_json = await send_json(gw, BOB, {"level": "warn", "n": 2})
        alice_logs = await send_json(gw, ALICE, {"level": "x", "n": 3}, collection="logs")
        alice_new_logs = await send_json(gw, ALICE, {"level": "y", "n": 4}, collection="logs")

        async def placed() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM json_documents") == 4)

        await wait_for(placed, what="the JSON documents placed in their collections")
        ages = {
            alice_image: 10,  # an image (5 days) but Alice's: kept forever
            bob_old_image: 10,  # due: images go after 5 days
            bob_new_image: 2,
            bob_json: 25,  # the default: 30 days
            bob_old_json: 40,  # due
            alice_logs: 2,  # due: the collection's rule is more specific than Alice's
            alice_new_logs: 0.5,
        }
        for upload_id, days in ages.items():
            await age(db, upload_id, days, now)
        as_of = now.isoformat()

        due = await listing(gw, ROOT, as_of=as_of)
        expected = {
            bob_old_image: "kind:image",
            bob_old_json: "default",
            alice_logs: "collection:logs",
        }
        assert {u["system_id"]: u["rule"] for u in due["uploads"]} == expected
        assert due["due"] == 3 and due["next"] is None and due["mode"] == "dry-run"
        assert due["by_rule"] == {"collection:logs": 1, "default": 1, "kind:image": 1}
        [logs] = [u for u in due["uploads"] if u["system_id"] == alice_logs]
        assert logs["owner"] == "alice" and logs["kind"] == "json" and logs["collection"] == "logs"
        assert logs["days"] == 1
        assert [u["system_id"] for u in await every_due(gw, ROOT, as_of=as_of)] == sorted(expected)
        # As of eight days ago only the 40-day-old document was due.
        week_ago = (now - timedelta(days=8)).isoformat()
        assert [u["system_id"] for u in await every_due(gw, ROOT, as_of=week_ago)] == [bob_old_json]
        # An admin bound to Bob sees (and would delete) only Bob's.
        bobs = await listing(gw, BOB_ADMIN, as_of=as_of)
        assert {u["system_id"] for u in bobs["uploads"]} == {bob_old_image, bob_old_json}
        # Nothing went yet: the listing deletes nothing.
        assert await uploads_left(db) == set(ages)

        before = await deleted_by_retention(gw)
        response = await gw.client.post(
            "/api/v1/admin/retention/run", json={"as_of": as_of}, headers=ROOT
        )
        assert response.status == 200, await response.text()
        run = await response.json()
        assert run["deleted_uploads"] == 3 and run["due"] == 3
        assert run["by_rule"] == due["by_rule"]
        assert await uploads_left(db) == set(ages) - set(expected)
        assert await deleted_by_retention(gw) == before + 3
        assert (await listing(gw, ROOT, as_of=as_of))["due"] == 0
        for upload_id in expected:
            response = await gw.client.get(f"/api/v1/objects/{upload_id}", headers=ROOT)
            assert response.status == 404
        audit = await db.fetch(
            """SELECT entity_id, actor, details->>'reason' AS reason FROM audit_log
               WHERE action = 'upload.delete'"""
        )
        assert {a["entity_id"] for a in audit} == set(expected)
        assert {(a["reason"], a["actor"].startswith("key:")) for a in audit} == {
            ("retention", True)
        }

        async def removed_from_collection() -> bool:
            left = await db.fetchval(
                "SELECT document_count FROM json_collections WHERE owner = 'alice'"
            )
            return bool(left == 1)

        await wait_for(removed_from_collection, what="the schemer removed the document")
        # Asked again: nothing more is due, nothing more goes.
        response = await gw.client.post("/api/v1/admin/retention/run", headers=ROOT)
        assert response.status == 200 and (await response.json())["deleted_uploads"] == 0


async def test_the_scheduled_job_counts_in_dry_run_mode_and_deletes_in_delete_mode(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]], db: asyncpg.Connection
) -> None:
    rules = {"retention_days": 1, "retention_rules": ["collection:logs=0"]}
    async with start_gateway(**rules) as gw:
        now = datetime.now(UTC)
        old = [await send_image(gw, {}, 1), await send_json(gw, {}, {"a": 1})]
        # Not placed yet (no schemer runs): the collection it asked for decides.
        kept = await send_json(gw, {}, {"a": 2}, collection="logs")
        fresh = await send_image(gw, {}, 2)
        for upload_id in (*old, kept):
            await age(db, upload_id, 3, now)
    async with start_gateway(retention_interval_seconds=0.1, **rules) as gw:

        async def counted() -> bool:
            text = await (await gw.client.get("/metrics")).text()
            return "\nretention_due_uploads 2.0\n" in text

        await wait_for(counted, what="the dry run's count")
        assert await uploads_left(db) == {*old, kept, fresh}
    async with start_gateway(
        retention_interval_seconds=0.1, retention_mode="delete", **rules
    ) as gw:

        async def deleted() -> bool:
            return await uploads_left(db) == {kept, fresh}

        await wait_for(deleted, what="the scheduled run's deletion")
        actors = await db.fetch(
            "SELECT DISTINCT actor FROM audit_log WHERE action = 'upload.delete'"
        )
        assert [a["actor"] for a in actors] == ["retention"]

        async def announced() -> bool:
            return bool(
                await db.fetchval(
                    """SELECT count(*) FROM outbox WHERE routing_key = 'uploads.deleted.v1'
                         AND sent_at IS NOT NULL"""
                )
            )

        await wait_for(announced, what="the deletion's event published")


async def test_hostile_retention_requests_get_a_clear_error_and_delete_nothing(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]], db: asyncpg.Connection
) -> None:
    async with start_gateway(api_keys=KEYS, retention_days=1) as gw:
        upload_id = await send_image(gw, BOB, 1)
        await age(db, upload_id, 3, datetime.now(UTC))
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        gets: list[tuple[dict[str, str], dict[str, str], int]] = [
            ({"as_of": "yesterday"}, ROOT, 400),
            ({"as_of": "2026-01-01T00:00:00"}, ROOT, 400),  # no time zone
            ({"as_of": "0001-01-01T00:00:00+00:00"}, ROOT, 400),
            ({"as_of": "9" * 5000}, ROOT, 400),
            ({"limit": "0"}, ROOT, 400),
            ({"limit": "1e3"}, ROOT, 400),
            ({"limit": "99999999999999999999"}, ROOT, 400),
            ({"after": "not-a-uuid"}, ROOT, 400),
            ({}, BOB, 403),
            ({}, {}, 401),
        ]
        for params, headers, status in gets:
            response = await gw.client.get(
                "/api/v1/admin/retention", params=params, headers=headers
            )
            assert response.status == status, (params, await response.text())
            assert "error" in await response.json()
        posts: list[tuple[Any, dict[str, str], int]] = [
            (b"[]", ROOT, 400),
            (b"not json", ROOT, 400),
            (b'{"as_of": "soon"}', ROOT, 400),
            (b'{"as_of": "2026-01-01T00:00:00"}', ROOT, 400),
            (b'{"as_of": 1e400}', ROOT, 400),
            (b'{"as_of": null, "everything": true}', ROOT, 400),
            (f'{{"as_of": "{tomorrow}"}}'.encode(), ROOT, 400),  # not due yet: refused
            (b'{"as_of": "1969-12-31T00:00:00Z"}', ROOT, 400),
            (b"[" * 100 + b"]" * 100, ROOT, 400),
            (b'{"as_of": "' + b"x" * 10_000 + b'"}', ROOT, 413),
            (b"{}", BOB, 403),
            (b"{}", ALICE, 403),
            (b"{}", {}, 401),
        ]
        for body, headers, status in posts:
            response = await gw.client.post(
                "/api/v1/admin/retention/run",
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            )
            assert response.status == status, (body[:60], await response.text())
            assert "error" in await response.json()
        assert await uploads_left(db) == {upload_id}
        # A listing may look ahead: tomorrow the same upload is still due.
        assert (await listing(gw, ROOT, as_of=tomorrow))["due"] == 1


async def test_the_command_lists_then_deletes(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]],
    database_url: str,
    bus_names: BusNames,
    storage_path: Path,
    db: asyncpg.Connection,
) -> None:
    async with start_gateway() as gw:
        now = datetime.now(UTC)
        old, young = await send_json(gw, {}, {"n": 1}), await send_json(gw, {}, {"n": 2})
        await age(db, old, 10, now)
        await age(db, young, 2, now)
    env = service_env(database_url, bus_names, storage_path, RETENTION_DAYS="7")

    async def command(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.retention", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = await command()
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split("\t")[:4] == [old, "anonymous", "json", "None"], lines
    assert lines[-1].startswith("1 uploads due (dry run"), lines
    assert await uploads_left(db) == {old, young}
    applied = await command("--apply")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("1 uploads deleted"), applied.stdout
    assert await uploads_left(db) == {young}
    refused = await command("--as-of", "next week")
    assert refused.returncode == 2 and "as_of must be an ISO 8601 instant" in refused.stderr
    env["RETENTION_RULES"] = "owner:carol=7,size:big=1"
    broken = await command()
    assert broken.returncode != 0
    assert "RETENTION_RULES" in broken.stderr and "size:big=1" in broken.stderr


def test_rules_parse_into_a_policy_and_bad_ones_are_named() -> None:
    policy = parse_rules(("collection:logs=1", "owner:a.b@c=0", "kind:json=2.5"), 30)
    assert policy == RetentionPolicy(30, {"logs": 1}, {"a.b@c": 0}, {"json": 2.5})
    assert policy.shortest_days == 1
    assert parse_rules(("owner:x=0",), 0).shortest_days is None
    for entry, message in [
        ("logs=1", "must be collection:NAME=DAYS"),
        ("collection:Logs=1", "not a collection name"),
        ("kind:audio=1", "kind must be one of"),
        ("owner:=1", "owner must be"),
        ("owner:a:b=1", "owner must be"),
        ("owner:x=-1", "0 (keep forever) or more"),
        ("owner:x=nan", "0 (keep forever) or more"),
        ("owner:x=soon", "days must be a number"),
        ("owner:x=1,owner:x=2", "has two rules"),
    ]:
        with pytest.raises(ValidationError) as raised:
            GatewaySettings(retention_rules=entry)
        line = describe_error(raised.value)
        assert "RETENTION_RULES" in line and message in line, line


async def test_a_run_over_several_batches_deletes_exactly_the_listing(
    settings_factory: Callable[..., GatewaySettings], db: asyncpg.Connection
) -> None:
    """2,500 uploads made directly (three events' worth are due), walked in id order."""
    n = 2500
    now = datetime.now(UTC)
    jobs, contents = [uuid.uuid4() for _ in range(n)], [uuid.uuid4() for _ in range(n)]
    await db.copy_records_to_table(
        "jobs", records=[(j, f"o{i % 5}", "r") for i, j in enumerate(jobs)],
        columns=["id", "owner", "request_id"],
    )  # fmt: skip
    await db.copy_records_to_table(
        "content",
        records=[(c, f"{i:064x}", "image", "image/png", 1, f"objects/{i:064x}", "clustered", j)
                 for i, (c, j) in enumerate(zip(contents, jobs, strict=True))],
        columns=["id", "sha256", "kind", "mime_type", "size_bytes", "storage_key", "stage",
                 "first_job_id"],
    )  # fmt: skip
    await db.copy_records_to_table(
        "uploads",
        records=[(uuid.uuid4(), j, c, f"o{i % 5}", 0, now - timedelta(days=i % 10))
                 for i, (j, c) in enumerate(zip(jobs, contents, strict=True))],
        columns=["id", "job_id", "content_id", "owner", "position", "created_at"],
    )  # fmt: skip
    policy = parse_rules(("owner:o0=0",), 3.5)  # days 4-9 are due, except o0's
    async with open_pool(settings_factory(), min_size=1, max_size=3) as pool:
        async with pool.acquire() as conn:
            listed: list[str] = []
            after = None
            while page := await list_due(conn, policy, now, EVERYONE, after=after, limit=1000):
                listed += [u["system_id"] for u in page]
                after = uuid.UUID(page[-1]["system_id"])
        run = await Retention(pool, policy).run(apply=True, as_of=now)
    # Days 4-9 are 6 in 10; o0 uploads on days 0 and 5, so 1 of those 6 is kept: 1,250.
    assert run is not None and run.due.total == len(listed) == 1250
    assert sorted(str(u) for u in run.deleted.upload_ids) == listed
    left = await db.fetch("SELECT owner, created_at FROM uploads")
    assert len(left) == n - 1250
    assert all(r["owner"] == "o0" or r["created_at"] > now - timedelta(days=3.5) for r in left)
    events = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE routing_key = 'uploads.deleted.v1'"
    )
    assert events == 2  # 1,000 and 250: one event per batch
