"""Re-clustering: proposals from a batch clustering, idempotent, never touching confirmed
clusters on their own, carried out exactly, and safe beside concurrent filing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from clusterer import commands, folders, reclustering
from clusterer.app import running
from clusterer.errors import CommandError
from clusterer.handlers import ClustererDeps, _assign, handle_embedded
from clusterer.settings import ClustererSettings
from common.consumer import Delivery
from common.messages import MediaEmbedded
from common.storage.filesystem import FileSystemStorage
from tests.clusterer.conftest import Seeded, folder_snapshot, kinds, seed_embedded
from tests.clusterer.test_admin import assert_centroid_is_mean
from tests.integration.conftest import Gateway

MODEL = "test/recluster-16"


@pytest.fixture
def start_clusterer(
    clusterer_settings: Callable[..., ClustererSettings],
) -> Callable[..., AbstractAsyncContextManager[ClustererDeps]]:
    """A clusterer with these settings (no scheduled runs); it stops when the block ends."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[ClustererDeps]:
        settings = clusterer_settings(cluster_recluster_interval_s=0, **overrides)
        async with running(settings) as deps:
            await deps.bus.wait_connected(10)
            yield deps

    return start


async def file_all(deps: ClustererDeps, seeded: list[Seeded]) -> None:
    model = await deps.models.get(deps.pool, MODEL)
    for s in seeded:
        await _assign(deps, model, s.content_id, s.vector)
        await folders.ensure_links(deps.pool, deps.storage, s.content_id)


async def seed(
    db: asyncpg.Connection, storage_path: Path, n_kinds: int, per_kind: int
) -> list[Seeded]:
    vectors, labels = kinds(n_kinds, per_kind, dim=16, spread=0.6, seed=7)
    return await seed_embedded(
        db, FileSystemStorage(storage_path, fsync=False), MODEL, vectors, labels
    )


async def recluster_now(gateway: Gateway) -> dict[str, Any]:
    """Ask the gateway for a re-clustering run of MODEL; the proposals once it is done."""
    client = gateway.client
    response = await client.post("/api/v1/clusters/recluster", json={"model_id": MODEL})
    assert response.status == 202, await response.text()
    for _ in range(200):
        body: dict[str, Any] = await (await client.get("/api/v1/clusters/proposals")).json()
        if body["runs"] and body["runs"][0]["status"] == "done":
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("the run did not finish")


async def memberships(db: asyncpg.Connection) -> dict[uuid.UUID, uuid.UUID]:
    rows = await db.fetch("SELECT id, cluster_id FROM content WHERE cluster_id IS NOT NULL")
    return {r["id"]: r["cluster_id"] for r in rows}


async def open_proposals(db: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT id, kind, cluster_ids, fingerprint FROM cluster_proposals WHERE status = 'open'"
        " ORDER BY id"
    )
    return rows


async def assert_exact(db: asyncpg.Connection, storage_path: Path, deps: ClustererDeps) -> None:
    """Every cluster's count and centroid are its members', and the folders are what a
    rebuild from the database makes."""
    for cluster_id in [r["id"] for r in await db.fetch("SELECT id FROM clusters")]:
        await assert_centroid_is_mean(db, cluster_id)
    total = await db.fetchval("SELECT coalesce(sum(member_count), 0) FROM clusters")
    assert total == await db.fetchval("SELECT count(*) FROM content WHERE cluster_id IS NOT NULL")
    before = folder_snapshot(storage_path)
    await folders.rebuild(deps.pool, deps.storage, from_scratch=True)
    assert folder_snapshot(storage_path) == before


async def test_singletons_get_merge_proposals_that_a_second_run_does_not_repeat(
    start_clusterer: Callable[..., AbstractAsyncContextManager[ClustererDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    seeded = await seed(db, storage_path, 3, 6)
    # A threshold nothing reaches: every item opens its own cluster.
    async with start_clusterer(cluster_threshold=0.9999) as deps:
        await file_all(deps, seeded)
        assert await db.fetchval("SELECT count(*) FROM clusters") == 18
        before = await memberships(db)
        # A run a stopped clusterer left marked running is marked failed by the next one.
        cut_short = uuid.uuid4()
        await db.execute(
            "INSERT INTO recluster_runs (id, model_id, requested_by) VALUES ($1, $2, 'x')",
            cut_short,
            MODEL,
        )
        first = await reclustering.run_model(deps, MODEL, "test")
        assert (
            await db.fetchval("SELECT status FROM recluster_runs WHERE id = $1", cut_short)
            == "failed"
        )
        proposals = await open_proposals(db)
        assert {p["kind"] for p in proposals} == {"merge"}
        # The batch clustering finds the three kinds: one merge per kind, each exact.
        by_kind: dict[int, set[uuid.UUID]] = {}
        for s in seeded:
            by_kind.setdefault(s.label, set()).add(before[s.content_id])
        assert {frozenset(p["cluster_ids"]) for p in proposals} == {
            frozenset(c) for c in by_kind.values()
        }
        # A run proposes; it changes nothing.
        assert await memberships(db) == before
        # Again over the same clusters: nothing new, nothing gone stale.
        second = await reclustering.run_model(deps, MODEL, "test")
        assert second != first
        assert await open_proposals(db) == proposals
        run = await db.fetchrow("SELECT * FROM recluster_runs WHERE id = $1", second)
        assert (run["status"], run["proposed"], run["items"]) == ("done", 0, 18)

        # Accepting one carries it out exactly: members moved, centroids and counts those of
        # the members, folders what a rebuild makes, an audit record.
        accepted = await commands.decide_proposal(deps, proposals[0]["id"], "accept", "admin")
        assert accepted["proposal"]["status"] == "accepted"
        target = uuid.UUID(accepted["proposal"]["plan"]["target"])
        assert await db.fetchval("SELECT member_count FROM clusters WHERE id = $1", target) == len(
            proposals[0]["cluster_ids"]
        )
        await assert_exact(db, storage_path, deps)
        assert (
            await db.fetchval(
                "SELECT count(*) FROM audit_log WHERE action = 'cluster.proposal.accept'"
            )
            == 1
        )
        # Decided proposals cannot be decided again; a dismissal sticks across runs.
        with pytest.raises(CommandError) as again:
            await commands.decide_proposal(deps, proposals[0]["id"], "dismiss", "admin")
        assert again.value.status == 409
        await commands.decide_proposal(deps, proposals[1]["id"], "dismiss", "admin")
        await reclustering.run_model(deps, MODEL, "test")
        statuses = dict(await db.fetch("SELECT id, status FROM cluster_proposals"))
        assert statuses[proposals[1]["id"]] == "dismissed"
        assert statuses[proposals[2]["id"]] == "open"
        # A proposal whose clusters went meanwhile goes stale when accepted.
        third = proposals[2]["cluster_ids"]
        await db.execute(
            "UPDATE content SET cluster_id = NULL, stage = 'embedded' WHERE cluster_id = $1",
            third[0],
        )
        await db.execute("DELETE FROM clusters WHERE id = $1", third[0])
        with pytest.raises(CommandError) as stale:
            await commands.decide_proposal(deps, proposals[2]["id"], "accept", "admin")
        assert stale.value.status == 409
        assert (
            await db.fetchval(
                "SELECT status FROM cluster_proposals WHERE id = $1", proposals[2]["id"]
            )
            == "stale"
        )


async def test_auto_merge_leaves_confirmed_clusters_alone(
    start_clusterer: Callable[..., AbstractAsyncContextManager[ClustererDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    seeded = await seed(db, storage_path, 2, 5)
    async with start_clusterer(cluster_threshold=0.9999, cluster_auto_merge=True) as deps:
        await file_all(deps, seeded)
        before = await memberships(db)
        confirmed = before[seeded[0].content_id]
        await db.execute("UPDATE clusters SET provisional = false WHERE id = $1", confirmed)
        await reclustering.run_model(deps, MODEL, "test")
        after = await memberships(db)
        # The confirmed cluster still holds exactly its one member, and still exists.
        assert [c for c, k in after.items() if k == confirmed] == [seeded[0].content_id]
        # Its kind's proposal waits for an admin; the other kind's merged on its own.
        waiting = await open_proposals(db)
        assert len(waiting) == 1 and confirmed in waiting[0]["cluster_ids"]
        other = {after[s.content_id] for s in seeded if s.label != seeded[0].label}
        assert len(other) == 1
        await assert_exact(db, storage_path, deps)


async def test_a_cluster_holding_two_kinds_gets_a_split_proposal(
    start_clusterer: Callable[..., AbstractAsyncContextManager[ClustererDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    seeded = await seed(db, storage_path, 2, 6)
    # A threshold everything reaches: one cluster of both kinds.
    async with start_clusterer(cluster_threshold=0.0001) as deps:
        await file_all(deps, seeded)
        assert await db.fetchval("SELECT count(*) FROM clusters") == 1
        await reclustering.run_model(deps, MODEL, "test")
        [proposal] = await open_proposals(db)
        assert proposal["kind"] == "split"
        result = await commands.decide_proposal(deps, proposal["id"], "accept", "admin")
        new = uuid.UUID(result["target"])
        after = await memberships(db)
        groups = {
            frozenset(c for c, k in after.items() if k == cluster)
            for cluster in set(after.values())
        }
        truth = {frozenset(s.content_id for s in seeded if s.label == label) for label in (0, 1)}
        assert groups == truth
        assert await db.fetchval("SELECT provisional FROM clusters WHERE id = $1", new)
        await assert_exact(db, storage_path, deps)


async def test_filing_during_a_run_loses_or_duplicates_no_membership(
    start_clusterer: Callable[..., AbstractAsyncContextManager[ClustererDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    seeded = await seed(db, storage_path, 4, 30)
    early, late = seeded[:60], seeded[60:]
    async with start_clusterer(cluster_threshold=0.9999, cluster_auto_merge=True) as deps:
        await file_all(deps, early)

        async def runs() -> None:
            for _ in range(3):
                await reclustering.run_model(deps, MODEL, "test")

        await asyncio.gather(runs(), file_all(deps, late))
        await reclustering.run_model(deps, MODEL, "test")
        after = await memberships(db)
        assert set(after) == {s.content_id for s in seeded}  # every content filed, once
        joins = await db.fetch(
            """SELECT entity_id, count(*) AS n FROM audit_log
               WHERE action IN ('cluster.join', 'cluster.create') GROUP BY 1"""
        )
        assert all(r["n"] == 1 for r in joins)
        await assert_exact(db, storage_path, deps)


async def test_proposals_through_the_gateway(
    gateway: Gateway,
    start_clusterer: Callable[..., AbstractAsyncContextManager[ClustererDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    seeded = await seed(db, storage_path, 2, 4)
    async with start_clusterer(cluster_threshold=0.9999) as deps:
        await file_all(deps, seeded)
        client = gateway.client
        body = await recluster_now(gateway)
        assert body["total"] == 2 and {p["kind"] for p in body["proposals"]} == {"merge"}
        first, second = body["proposals"]
        assert first["gain"] >= second["gain"] and "linkage threshold" in first["reason"]
        response = await client.post(f"/api/v1/clusters/proposals/{first['id']}/accept")
        assert response.status == 200, await response.text()
        response = await client.post(f"/api/v1/clusters/proposals/{second['id']}/dismiss")
        assert (await response.json())["proposal"]["status"] == "dismissed"
        # Bad requests: 400 / 404 / 409, never a 5xx.
        for path, status in (
            (f"/api/v1/clusters/proposals/{second['id']}/accept", 409),
            (f"/api/v1/clusters/proposals/{uuid.uuid4()}/accept", 404),
            ("/api/v1/clusters/proposals/not-a-uuid/accept", 400),
            ("/api/v1/clusters/proposals/x/explode", 404),
        ):
            response = await client.post(path)
            assert response.status == status, (path, await response.text())
        for body_bytes, status in (
            (b"[1]", 400),
            (b'{"model_id": ""}', 400),
            (b"{", 400),
            (b'{"model_id": "x", "more": 1}', 400),
            (b"x" * 10_000, 413),
        ):
            response = await client.post(
                "/api/v1/clusters/recluster",
                data=body_bytes,
                headers={"Content-Type": "application/json"},
            )
            assert response.status == status, (body_bytes[:20], await response.text())
        for query in ("status=bogus", "limit=0", "limit=x", "offset=-1"):
            response = await client.get(f"/api/v1/clusters/proposals?{query}")
            assert response.status == 400, query
        everything = await (await client.get("/api/v1/clusters/proposals?status=all")).json()
        assert {p["status"] for p in everything["proposals"]} == {"accepted", "dismissed"}
        # The merged cluster shows the threshold it applies: the override, from the model.
        target = first["plan"]["target"]
        shown = await (await client.get(f"/api/v1/clusters/{target}")).json()
        assert shown["member_count"] == 4
        assert (shown["threshold"], shown["threshold_source"]) == (0.9999, "model")


async def test_a_near_duplicate_joins_its_originals_cluster_and_is_left_out_of_calibration(
    start_clusterer: Callable[..., AbstractAsyncContextManager[ClustererDeps]],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    vectors, _ = kinds(2, 1, dim=16, spread=0.1, seed=2)  # two unrelated directions
    original, copy = await seed_embedded(
        db, FileSystemStorage(storage_path, fsync=False), MODEL, vectors, [0, 1]
    )
    # The embedder found `copy` to be a re-encoding of `original` (pHash); its vector here is
    # far from the original's, so no threshold would put them together.
    await db.execute(
        "UPDATE content SET near_duplicate_of = $1 WHERE id = $2",
        original.content_id,
        copy.content_id,
    )
    async with start_clusterer(cluster_threshold=0.9999) as deps:
        for seeded in (original, copy):
            event = MediaEmbedded(
                content_id=seeded.content_id,
                job_id=seeded.content_id,
                kind="image",
                model_id=MODEL,
            )
            await handle_embedded(deps, event, cast(Delivery, None))
        after = await memberships(db)
        assert after[copy.content_id] == after[original.content_id]
        assert await db.fetchval("SELECT count(*) FROM clusters") == 1
        await assert_exact(db, storage_path, deps)
        await deps.models.get(deps.pool, MODEL)
        calibration = deps.models.calibration(MODEL)
        assert calibration is not None and calibration.items == 1  # the copy does not count
