"""A model switch from the colour model to a tiny CLIP while uploads and searches go on.

The whole path runs for real: gateway, clusterer, and an embedder holding both models; the
backfill, the standby clusters, the pause, the flip and the drop through the admin API.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clusterer.handlers import ClustererDeps
from clusterer.switching import carry_names
from embedder.app import ModelNotUsable
from mammoth_export.colour_model import COLOURS, export_colour_model
from mammoth_export.colour_model import MODEL_ID as COLOUR_ID
from tests.clusterer.conftest import colour_png, wait_for
from tests.clusterer.test_pipeline import upload, wait_done
from tests.integration.conftest import Gateway


@pytest.fixture(scope="session")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mammoth_export.export import export_tiny_clip

    models = tmp_path_factory.mktemp("models")
    export_colour_model(models / "colour")
    export_tiny_clip(models / "clip-tiny", seed=0)
    return models


@pytest.fixture
def embedder_with(start_embedder: Any, two_models: Path) -> Any:
    """An embedder on the colour model or the tiny CLIP, and maybe the other one next."""

    def start(name: str, next_name: str | None = None) -> Any:
        return start_embedder(
            two_models,
            name,
            embedding_model_next=next_name,
            intra_op_threads=1,
            model_backfill_batch=4,
            model_backfill_poll_s=0.2,
            model_backfill_rate=3.0,
        )

    return start


async def _switch(gateway: Gateway, action: str | None = None) -> tuple[int, Any]:
    if action is None:
        response = await gateway.client.get("/api/v1/admin/model-switch")
    else:
        response = await gateway.client.post(f"/api/v1/admin/model-switch/{action}")
    return response.status, await response.json()


class Traffic:
    """Uploads one image at a time and searches (by text and by example) all along,
    recording every answer."""

    def __init__(self, gateway: Gateway, like: str) -> None:
        self.gateway = gateway
        self.like = like
        self.uploads: list[str] = []
        self.searches: list[tuple[int, str | None]] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._upload()), asyncio.create_task(self._search())]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _upload(self) -> None:
        n = 0
        colours = list(COLOURS.values())
        while not self._stop.is_set():
            n += 1
            self.uploads += await upload(
                self.gateway, (f"live{n}.png", colour_png(colours[n % 3], seed=1000 + n))
            )
            await asyncio.sleep(0.15)

    async def _search(self) -> None:
        while not self._stop.is_set():
            for query in ("query=red", f"like={self.like}"):
                response = await self.gateway.client.get(f"/api/v1/search?{query}&limit=5")
                body = await response.json()
                self.searches.append((response.status, body.get("model_id")))
                if response.status != 200:
                    self.failures.append(f"{query}: {response.status} {body}")
            await asyncio.sleep(0.05)


async def _count(db: asyncpg.Connection, sql: str, *args: Any) -> int:
    value: int = await db.fetchval(sql, *args)
    return value


async def test_a_model_switch_backfills_flips_and_drops_while_uploads_and_searches_go_on(
    gateway: Gateway,
    clusterer: ClustererDeps,
    embedder_with: Any,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    reds = [(f"red{i}.png", colour_png(COLOURS["red"], seed=i)) for i in range(4)]
    blues = [(f"blue{i}.png", colour_png(COLOURS["blue"], seed=10 + i)) for i in range(4)]
    async with embedder_with("colour"):
        first = await upload(gateway, *reds, *blues)
        await wait_done(first, db, storage_path)
    red_cluster = await db.fetchval(
        "SELECT c.cluster_id FROM uploads u JOIN content c ON c.id = u.content_id WHERE u.id = $1",
        uuid.UUID(first[0]),
    )
    for change in ({"action": "rename", "name": "Reds"}, {"action": "confirm"}):
        response = await gateway.client.patch(f"/api/v1/clusters/{red_cluster}", json=change)
        assert response.status == 200, await response.text()
    status, state = await _switch(gateway)
    assert (status, state["active_model"], state["switch"]) == (200, COLOUR_ID, None)

    async with embedder_with("colour", "clip-tiny") as embedder:
        tiny = embedder.next.model_id if embedder.next else ""
        async with Traffic(gateway, first[1]) as traffic:
            status, state = await _switch(gateway)
            assert state["switch"]["status"] == "backfilling"
            assert (state["switch"]["from_model"], state["switch"]["to_model"]) == (
                COLOUR_ID,
                tiny,
            )
            status, state = await _switch(gateway, "pause")
            assert (status, state["switch"]["status"]) == (200, "paused")
            await asyncio.sleep(0.5)  # an item started before the pause may still finish
            pending = (await _switch(gateway))[1]["progress"]["pending"]
            assert pending > 0  # at MODEL_BACKFILL_RATE=3 the backfill takes seconds
            status, refused = await _switch(gateway, "flip")
            assert status == 409 and refused["details"]["pending"] == pending, refused
            await asyncio.sleep(1.0)
            assert (await _switch(gateway))[1]["progress"]["pending"] == pending  # paused
            status, state = await _switch(gateway, "resume")
            assert (status, state["switch"]["status"]) == (200, "backfilling")

            async def backfilled() -> bool:
                progress = (await _switch(gateway))[1]["progress"]
                return bool(progress["pending"] == 0 and progress["filed"] == progress["media"])

            await wait_for(backfilled, timeout=60, what="the backfill and standby filing")
            # A deletion meanwhile: its standby membership leaves its cluster exactly.
            gone = await db.fetchval(
                "SELECT content_id FROM uploads WHERE id = $1", uuid.UUID(first[-1])
            )
            response = await gateway.client.delete(f"/api/v1/objects/{first[-1]}")
            assert response.status in (200, 202), await response.text()

            async def purged() -> bool:
                return not await db.fetchval(
                    "SELECT EXISTS (SELECT FROM content WHERE id = $1)", gone
                )

            await wait_for(purged, timeout=30, what="the deleted content purged")
            await wait_for(backfilled, timeout=60, what="the backfill after the delete")
            assert await _standby_counts_exact(db, tiny)
            # Standby clusters are neither listed nor changed before the flip.
            standby_cluster = await db.fetchval(
                "SELECT id FROM clusters WHERE model_id = $1 LIMIT 1", tiny
            )
            response = await gateway.client.patch(
                f"/api/v1/clusters/{standby_cluster}", json={"action": "rename", "name": "no"}
            )
            assert response.status == 409, await response.text()
            listed = await (await gateway.client.get("/api/v1/clusters")).json()
            assert {c["model_id"] for c in listed["clusters"]} == {COLOUR_ID}
            # Before the flip search used only the colour model, and every media content has
            # both models' vectors.
            assert {m for _, m in traffic.searches} == {COLOUR_ID}
            assert (
                await _count(
                    db,
                    """SELECT count(*) FROM content c WHERE c.kind <> 'json'
                     AND c.stage IN ('embedded', 'clustered')
                     AND (SELECT count(*) FROM embeddings e WHERE e.content_id = c.id) < 2""",
                )
                == 0
            )
            flipped_at = len(traffic.searches)
            for _ in range(50):  # live uploads may be between their two filings: try again
                status, state = await _switch(gateway, "flip")
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200, state
            assert state["active_model"] == tiny
            assert state["switch"]["status"] == "flipped"
            await asyncio.sleep(1.0)  # searches go on against the new model
            after_flip = {m for _, m in traffic.searches[flipped_at + 2 :]}
            assert after_flip == {tiny}

            status, state = await _switch(gateway, "drop")
            assert (status, state["switch"]["status"]) == (200, "dropped"), state
            await asyncio.sleep(1.0)
        assert traffic.failures == []
        assert len(traffic.uploads) >= 5
        everything = [u for u in first[:-1]] + traffic.uploads
        await wait_done(everything, db, storage_path, timeout=60)

    # Every upload is filed in the new model's clusters, with its vector; nothing of the
    # old model remains, and an embedder on it is refused.
    assert await _count(
        db,
        """SELECT count(*) FROM uploads u JOIN content c ON c.id = u.content_id
           JOIN clusters cl ON cl.id = c.cluster_id AND cl.model_id = $1
           JOIN embeddings e ON e.content_id = c.id AND e.model_id = $1
           WHERE u.id = ANY($2::uuid[])""",
        tiny,
        [uuid.UUID(u) for u in everything],
    ) == len(everything)
    for table in ("embeddings", "clusters", "video_frames", "standby_members"):
        assert await _count(db, f"SELECT count(*) FROM {table} WHERE model_id = $1", COLOUR_ID) == 0
    assert await db.fetchval("SELECT retired_at IS NOT NULL FROM models WHERE id = $1", COLOUR_ID)
    report = state["switch"]["report"]["flipped"]
    if report["names_carried"]:
        row = await db.fetchrow(
            "SELECT model_id, provisional, name_source FROM clusters WHERE name = 'Reds'"
        )
        assert dict(row) == {"model_id": tiny, "provisional": False, "name_source": "admin"}
    else:
        assert report["names_not_carried"] == ["Reds"]
    with pytest.raises(ModelNotUsable, match="retired"):
        async with embedder_with("colour"):
            pass
    async with embedder_with("clip-tiny") as embedder:  # the new model alone: nothing to say
        response = await gateway.client.get("/api/v1/search?query=red")
        assert response.status == 200


async def _standby_counts_exact(db: asyncpg.Connection, model_id: str) -> bool:
    rows = await db.fetch(
        """SELECT cl.id, cl.member_count,
                  (SELECT count(*) FROM standby_members s WHERE s.cluster_id = cl.id) AS members
           FROM clusters cl WHERE cl.model_id = $1""",
        model_id,
    )
    return all(r["member_count"] == r["members"] for r in rows) and len(rows) > 0


async def test_an_embedder_refuses_a_model_that_is_neither_active_nor_switched_to(
    embedder_with: Any,
) -> None:
    async with embedder_with("colour"):
        pass
    with pytest.raises(ModelNotUsable, match="EMBEDDING_MODEL_NEXT"):
        async with embedder_with("clip-tiny"):
            pass


def _cluster(name: str, members: int, provisional: bool = False) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "name": name,
        "name_source": "admin",
        "provisional": provisional,
        "member_count": members,
    }


def test_confirmed_names_pass_only_by_a_majority_both_ways() -> None:
    cats, dogs, birds, draft = (
        _cluster("Cats", 10),
        _cluster("Dogs", 10),
        _cluster("Birds", 4),
        _cluster("draft", 6, provisional=True),
    )
    # New clusters: one mostly cats; one with all dogs but twice as many others (not mostly
    # dogs); one that is the draft's (provisional: nothing to carry); one already called "Cats".
    a, b, c, d = (_cluster(n, m, True) for n, m in (("x", 8), ("y", 30), ("z", 6), ("Cats", 3)))
    overlaps = [
        {"old": cats["id"], "new": a["id"], "n": 7},
        {"old": cats["id"], "new": d["id"], "n": 3},
        {"old": dogs["id"], "new": b["id"], "n": 10},
        {"old": birds["id"], "new": b["id"], "n": 4},
        {"old": draft["id"], "new": c["id"], "n": 6},
    ]
    names, carried, kept = carry_names(
        [cats, dogs, birds, draft],
        [a, b, c, d],
        overlaps,
    )
    assert names[a["id"]] == "Cats" and carried == {a["id"]: "admin"}
    assert names[d["id"]] not in ("Cats", "") and d["id"] not in carried  # renamed aside
    assert b["id"] not in names and c["id"] not in names
    assert kept == ["Birds", "Dogs"]
