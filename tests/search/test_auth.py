"""API keys: roles, owner isolation (even by guessed ids), idempotency per key, CORS."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from clusterer.handlers import ClustererDeps
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from tests.clusterer.conftest import colour_png
from tests.clusterer.test_pipeline import wait_done
from tests.integration.test_ingest import form

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789abc"
READER = "reader-key-0123456789"
WRITER = "writer-key-0123456789"
ROOT = "root-key-0123456789xyz"
KEYS = (f"{ALICE}:admin:alice", f"{BOB}:admin:bob", f"{READER}:read", f"{WRITER}:write")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_keys_keep_each_owner_to_its_own_uploads_even_when_ids_are_guessed(
    start_gateway: Callable[..., Any],
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    async with start_gateway(api_keys=KEYS, admin_api_key=ROOT) as gateway:
        client = gateway.client

        async def call(
            method: str, path: str, key: str | None = None, **kw: Any
        ) -> tuple[int, Any]:
            headers = {**kw.pop("headers", {}), **(auth(key) if key else {})}
            response = await client.request(method, path, headers=headers, **kw)
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body

        # No key, or an unknown one: 401 everywhere under /api/v1 (the probes stay open).
        for method, path in (
            ("GET", "/api/v1/search?query=x"),
            ("GET", "/api/v1/clusters"),
            ("POST", "/api/v1/ingest"),
            ("GET", "/api/v1/admin/dlq"),
            ("GET", f"/api/v1/objects/{uuid.uuid4()}"),
        ):
            response = await client.request(method, path)
            assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
            assert (await call(method, path, "not-a-key-at-all-xx"))[0] == 401
            response = await client.request(
                method, path, headers={"X-API-Key": "wrong-key-0123456789"}
            )
            assert response.status == 401
        for path in ("/live", "/ready", "/metrics"):
            assert (await client.get(path)).status == 200
        health = await (await client.get("/health")).json()
        assert health["auth"] == {"mode": "api-keys"}

        # Roles: read < write < admin.
        assert (await call("GET", "/api/v1/clusters", READER))[0] == 200
        assert (
            await call(
                "POST",
                "/api/v1/ingest",
                READER,
                data=form(("a.png", colour_png(COLOURS["red"], 1))),
            )
        )[0] == 403
        assert (await call("GET", "/api/v1/admin/dlq", WRITER))[0] == 403
        assert (
            await call(
                "PATCH", f"/api/v1/clusters/{uuid.uuid4()}", WRITER, json={"action": "confirm"}
            )
        )[0] == 403

        # The owner comes from the key; a form may not say otherwise.
        status, body = await call(
            "POST",
            "/api/v1/ingest",
            ALICE,
            data=form(("x.png", colour_png(COLOURS["red"], 9)), owner="bob"),
        )
        assert status == 403
        status, alice_job = await call(
            "POST", "/api/v1/ingest", ALICE,
            data=form(*((f"red{i}.png", colour_png(COLOURS["red"], i)) for i in range(2))),
        )  # fmt: skip
        assert status == 202
        status, bob_job = await call(
            "POST", "/api/v1/ingest", BOB,
            data=form(*((f"blue{i}.png", colour_png(COLOURS["blue"], 10 + i)) for i in range(2))),
        )  # fmt: skip
        assert status == 202
        alice_ids, bob_ids = alice_job["system_ids"], bob_job["system_ids"]
        await wait_done(alice_ids + bob_ids, db, storage_path)
        owners = {
            r["owner"]
            for r in await db.fetch(
                "SELECT owner FROM uploads WHERE job_id = $1", uuid.UUID(alice_job["job_id"])
            )
        }
        assert owners == {"alice"}

        # Bob cannot see Alice's job, objects, bytes or thumbnails, even knowing their ids.
        assert (await call("GET", f"/api/v1/ingest/{alice_job['job_id']}/status", BOB))[0] == 404
        assert (await call("GET", f"/api/v1/ingest/{alice_job['job_id']}/status", ALICE))[0] == 200
        for suffix in ("", "/content", "/thumbnail"):
            assert (await call("GET", f"/api/v1/objects/{alice_ids[0]}{suffix}", BOB))[0] == 404
            assert (await call("GET", f"/api/v1/objects/{alice_ids[0]}{suffix}", ALICE))[0] == 200
            assert (await call("GET", f"/api/v1/objects/{alice_ids[0]}{suffix}", ROOT))[0] == 200

        # Search: Bob finds only his, whatever he asks; asking for Alice's is refused.
        status, body = await call(
            "GET", "/api/v1/search?query=a%20red%20photo&threshold=0&limit=100", BOB
        )
        assert status == 200 and {r["id"] for r in body["results"]} == set(bob_ids)
        assert (await call("GET", "/api/v1/search?query=x&owner=alice", BOB))[0] == 403
        assert (await call("GET", f"/api/v1/search?like={alice_ids[0]}", BOB))[0] == 404
        status, body = await call(
            "POST", "/api/v1/search", ALICE, json={"query": "a blue photo", "threshold": 0}
        )
        assert {r["id"] for r in body["results"]} == set(alice_ids)
        status, body = await call(
            "GET", "/api/v1/search?query=a%20photo&threshold=0&limit=100", ROOT
        )
        assert {r["id"] for r in body["results"]} == set(alice_ids + bob_ids)

        # Clusters: Bob sees his cluster and his members; Alice's cluster is as good as absent.
        status, body = await call("GET", "/api/v1/clusters", BOB)
        assert [c["name"] for c in body["clusters"]] == ["blue"] and body["total"] == 1
        red = await db.fetchval("SELECT id FROM clusters WHERE name = 'red'")
        assert (await call("GET", f"/api/v1/clusters/{red}", BOB))[0] == 404
        status, body = await call("GET", f"/api/v1/clusters/{red}", ALICE)
        assert {m["system_id"] for m in body["members"]} == set(alice_ids)
        # Changing clusters (shared by every owner) is for an unbound admin key.
        assert (await call("PATCH", f"/api/v1/clusters/{red}", ALICE, json={"action": "confirm"}))[
            0
        ] == 403

        # Dead letters: an owner-bound admin key sees and requeues only its owner's jobs.
        await db.execute(
            """INSERT INTO dead_letters (message_id, queue, routing_key, body, error, job_id)
               VALUES ('m1', 'q', 'media.ingested.v1', '\\x7b7d', 'boom', $1)""",
            uuid.UUID(alice_job["job_id"]),
        )
        assert len((await call("GET", "/api/v1/admin/dlq", ALICE))[1]) == 1
        assert (await call("GET", "/api/v1/admin/dlq", BOB))[1] == []
        assert (await call("GET", f"/api/v1/admin/dlq/{alice_job['job_id']}", BOB))[0] == 404
        assert (await call("POST", f"/api/v1/admin/dlq/{alice_job['job_id']}/requeue", BOB))[
            0
        ] == 404
        assert (await call("DELETE", f"/api/v1/admin/dlq/{alice_job['job_id']}", BOB))[0] == 404
        requeue_all = await call("POST", "/api/v1/admin/dlq/requeue", BOB, json={"all": True})
        assert requeue_all[1] == {"requeued": 0}
        assert len((await call("GET", "/api/v1/admin/dlq", ROOT))[1]) == 1


async def test_idempotency_keys_are_scoped_per_api_key_when_keys_are_configured(
    start_gateway: Callable[..., Any],
) -> None:
    async with start_gateway(api_keys=KEYS, admin_api_key=ROOT) as gateway:
        image = colour_png(COLOURS["green"], 3)

        async def post(key: str) -> Any:
            response = await gateway.client.post(
                "/api/v1/ingest",
                data=form(("g.png", image), owner="carol", idempotency_key="k-1"),
                headers=auth(key),
            )
            assert response.status == 202, await response.text()
            return await response.json()

        first = await post(WRITER)
        other = await post(ROOT)  # the same idempotency key, another API key: its own job
        again = await post(WRITER)  # a safe retry: the original answer
        assert other["job_id"] != first["job_id"] and again["job_id"] == first["job_id"]


async def test_cors_answers_allowed_origins_only_when_configured(
    start_gateway: Callable[..., Any],
) -> None:
    async with start_gateway(cors_allow_origins=("https://app.example",)) as gateway:
        client = gateway.client
        preflight = await client.options(
            "/api/v1/search",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization"},
        )  # fmt: skip
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        response = await client.get("/api/v1/clusters", headers={"Origin": "https://app.example"})
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        response = await client.get("/api/v1/clusters", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in response.headers
        # Open mode (no keys) is said plainly in /health.
        health = await (await client.get("/health")).json()
        assert health["auth"]["mode"] == "open" and "anyone" in health["auth"]["warning"]


def test_bad_api_key_settings_stop_the_gateway_with_one_line() -> None:
    import os
    import subprocess
    import sys

    for value, expected in (
        ("short:read", "at least 16"),
        ("long-enough-key-123:superuser", "role must be"),
        ("long-enough-key-123", "key:role"),
        ("long-enough-key-123:read:bad owner!", "invalid owner"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "gateway"],
            env={**os.environ, "API_KEYS": value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "API_KEYS" in result.stderr and expected in result.stderr
        assert value.split(":")[0] not in result.stderr or value.startswith("short")


async def test_every_protected_operation_answers_401_without_a_key_and_403_below_its_role(
    start_gateway: Callable[..., Any],
) -> None:
    from gateway.openapi import document

    async with start_gateway(api_keys=KEYS, admin_api_key=ROOT) as gateway:
        checked = 0
        for path, operations in document()["paths"].items():
            concrete = (
                path.replace("{job_id}", str(uuid.uuid4()))
                .replace("{object_id}", str(uuid.uuid4()))
                .replace("{cluster_id}", str(uuid.uuid4()))
                .replace("{schema_id}", str(uuid.uuid4()))
                .replace("{name}", "people")
                .replace("{n}", "1")
            )
            for method, operation in operations.items():
                response = await gateway.client.request(method.upper(), concrete)
                if operation.get("security") == []:
                    assert response.status != 401, (method, path)
                    continue
                assert response.status == 401, (method, path, response.status)
                checked += 1
                admin_only = (
                    path.startswith("/api/v1/admin/")
                    or path.startswith("/api/v1/clusters/proposals")
                    or method == "patch"
                    or (
                        method == "post"
                        and path.startswith(("/api/v1/schemas/", "/api/v1/clusters/"))
                    )
                )
                response = await gateway.client.request(
                    method.upper(), concrete, headers=auth(READER)
                )
                # Writing needs `write`: ingest, and deleting an upload or a job.
                writes = (method == "post" and path == "/api/v1/ingest") or method == "delete"
                assert (response.status == 403) == (admin_only or writes), (
                    method,
                    path,
                    response.status,
                )
        assert checked == 35
