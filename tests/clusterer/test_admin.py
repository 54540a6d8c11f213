"""Admin operations end to end: gateway -> command over the bus -> clusterer -> database, disk."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY

from clusterer.commands import answer, run
from clusterer.errors import CommandError
from clusterer.folders import rebuild
from clusterer.handlers import ClustererDeps
from clusterer.repo import SEARCH_KEY_DRIFT
from common.cluster_commands import ClusterCommand, ClusterCommandReply, UpdateThreshold
from common.messages import MediaAnalyzed
from common.topology import spec_of
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from tests.clusterer.conftest import colour_png, folder_snapshot, wait_for
from tests.clusterer.test_pipeline import upload, wait_done
from tests.integration.conftest import Gateway

PINK = (255, 64, 64)  # between red and orange: cosine ~0.73 to the red axis


async def patch(gateway: Gateway, cluster_id: object, body: Any) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await gateway.client.patch(
        f"/api/v1/clusters/{cluster_id}", data=raw, headers={"Content-Type": "application/json"}
    )
    return response.status, await response.json()


async def get(gateway: Gateway, path: str) -> tuple[int, Any]:
    response = await gateway.client.get(path)
    return response.status, await response.json()


async def cluster_ids_by_name(db: asyncpg.Connection) -> dict[str, uuid.UUID]:
    return {r["name"]: r["id"] for r in await db.fetch("SELECT id, name FROM clusters")}


def links_in(storage_path: Path, cluster_id: object) -> set[str]:
    prefix = f"media/clusters/{cluster_id}/"
    return {
        p[len(prefix) :].split("_")[0]
        for p in folder_snapshot(storage_path)
        if p.startswith(prefix) and "/thumbnails/" not in p
    }


async def assert_centroid_is_mean(db: asyncpg.Connection, cluster_id: object) -> None:
    rows = await db.fetch(
        """SELECT e.embedding::text AS e FROM content c JOIN embeddings e ON e.content_id = c.id
           WHERE c.cluster_id = $1""",
        cluster_id,
    )
    members = np.array([orjson.loads(r["e"]) for r in rows])
    mean = members.sum(axis=0)
    mean /= np.linalg.norm(mean)
    row = await db.fetchrow(
        """SELECT l2_normalize(centroid_sum)::text AS c, centroid <=> centroid_sum AS drift,
                  member_count FROM clusters WHERE id = $1""",
        cluster_id,
    )
    assert row["member_count"] == len(rows)
    np.testing.assert_allclose(np.array(orjson.loads(row["c"])), mean, atol=1e-5)
    assert row["drift"] <= SEARCH_KEY_DRIFT + 1e-6  # the HNSW search key follows closely


async def test_admin_actions_work_end_to_end_when_sent_through_the_gateway(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    files = [
        (f"{kind}-{i}.png", colour_png(COLOURS[kind], seed=10 * i + n))
        for i in range(3)
        for n, kind in enumerate(("red", "green", "blue"))
    ]
    ids = await upload(gateway, *files)
    await wait_done(ids, db, storage_path)
    names = await cluster_ids_by_name(db)
    red, green, blue = names["red"], names["green"], names["blue"]
    red_uploads = {u for (n, _), u in zip(files, ids, strict=True) if n.startswith("red")}

    # Listing, filters, paging, thumbnails.
    status, body = await get(gateway, "/api/v1/clusters?provisional=true")
    assert status == 200 and body["total"] == 3
    assert all(len(c["thumbnails"]) == 3 and c["member_count"] == 3 for c in body["clusters"])
    assert (await get(gateway, "/api/v1/clusters?provisional=false"))[1]["total"] == 0
    status, body = await get(gateway, f"/api/v1/clusters/{red}?limit=2")
    assert status == 200 and body["name"] == "red" and body["members_total"] == 3
    assert len(body["members"]) == 2
    page2 = (await get(gateway, f"/api/v1/clusters/{red}?limit=2&offset=2"))[1]["members"]
    assert {m["system_id"] for m in body["members"] + page2} == red_uploads
    thumb = await gateway.client.get(body["members"][0]["thumbnail_url"])
    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/jpeg"

    # Errors: 400 for malformed ids, queries and changes; 404 for unknown clusters; 409 on conflicts.
    assert (await get(gateway, "/api/v1/clusters/not-a-uuid"))[0] == 400
    assert (await get(gateway, f"/api/v1/clusters/{uuid.uuid4()}"))[0] == 404
    for query in ("provisional=maybe", "limit=0", "limit=x", "offset=-1"):
        assert (await get(gateway, f"/api/v1/clusters?{query}"))[0] == 400, query
    for bad in (
        b"{not json",
        b"[]",
        {"action": "explode"},
        {"action": "rename"},
        {"action": "rename", "name": "   "},
        {"action": "rename", "name": "x" * 201},
        {"action": "update_threshold", "threshold": 1.5},
        {"action": "update_threshold", "threshold": "high"},
        {"action": "merge", "source_ids": []},
        {"action": "merge", "source_ids": ["nope"]},
        {"action": "confirm", "extra": 1},
    ):
        status, error = await patch(gateway, red, bad)
        assert status == 400, (bad, error)
        assert error["error"] and error["request_id"]
    assert (await patch(gateway, red, b"{" + b" " * 70_000 + b"}"))[0] == 413
    assert (await patch(gateway, uuid.uuid4(), {"action": "confirm"}))[0] == 404
    assert (await patch(gateway, "not-a-uuid", {"action": "confirm"}))[0] == 400
    assert (await patch(gateway, red, {"action": "merge", "source_ids": [str(red)]}))[0] == 400
    status, error = await patch(
        gateway, red, {"action": "merge", "source_ids": [str(uuid.uuid4())]}
    )
    assert status == 404 and error["error"] == "cluster not found"
    status, error = await patch(gateway, red, {"action": "rename", "name": "green"})
    assert status == 409
    other = uuid.uuid4()
    await db.execute("INSERT INTO models (id, dim) VALUES ('other/model', 3)")
    await db.execute(
        """INSERT INTO clusters (id, model_id, name, threshold, centroid_sum, centroid,
                                 member_count)
           VALUES ($1, 'other/model', 'elsewhere', 0.7, '[1,0,0]', '[1,0,0]', 0)""",
        other,
    )
    status, error = await patch(gateway, red, {"action": "merge", "source_ids": [str(other)]})
    assert status == 409 and "different embedding models" in error["error"]
    await db.execute("DELETE FROM clusters WHERE id = $1", other)

    # An admin's name survives a later analysis; a placeholder does not.
    status, body = await patch(gateway, red, {"action": "rename", "name": "Crimson"})
    assert status == 200 and body["cluster"]["name"] == "Crimson"
    assert body["cluster"]["name_source"] == "admin"
    # Counted on the naming stage alone (the analyzed queue: this test's clusterer is the one
    # consuming it now), so nothing else in flight can be mistaken for these two.
    stage = spec_of(clusterer.bus.specs, "clusterer", MediaAnalyzed.routing_key).stage
    labels = {"service": "clusterer", "stage": stage}

    def handled() -> float:
        return REGISTRY.get_sample_value("job_processing_duration_seconds_count", labels) or 0

    handled_before = handled()
    for upload_id, name in ((ids[0], "Scarlet"), (ids[1], "Lawn")):  # a red, then a green
        content_id = await db.fetchval(
            "SELECT content_id FROM uploads WHERE id = $1", uuid.UUID(upload_id)
        )
        event = MediaAnalyzed(
            content_id=content_id, job_id=uuid.uuid4(), vlm_model="vlm", suggested_cluster_name=name
        )
        await clusterer.bus.publish(
            event.routing_key, event.to_bytes(), message_id=str(event.message_id)
        )

    async def both_handled() -> bool:
        return handled() - handled_before >= 2

    await wait_for(both_handled, what="two analyses handled")
    assert await cluster_ids_by_name(db) == {"Crimson": red, "Lawn": green, "blue": blue}

    # Confirm.
    status, body = await patch(gateway, green, {"action": "confirm"})
    assert status == 200 and body["cluster"]["provisional"] is False
    assert (await get(gateway, "/api/v1/clusters?provisional=false"))[1]["total"] == 1

    # Merge: members and links move, the centroid is recomputed, the source goes.
    blue_links = links_in(storage_path, blue)
    status, body = await patch(gateway, green, {"action": "merge", "source_ids": [str(blue)]})
    assert status == 200 and body["moved"] == 3 and body["cluster"]["member_count"] == 6
    assert (await get(gateway, f"/api/v1/clusters/{blue}"))[0] == 404
    assert not (storage_path / "media" / "clusters" / str(blue)).exists()
    assert blue_links < links_in(storage_path, green) and len(links_in(storage_path, green)) == 6
    await assert_centroid_is_mean(db, green)

    # update_threshold with re-evaluation: members below the new threshold are filed again
    # (with 3 reds and 2 salmons the salmons sit at ~0.90 to the centroid, the reds ~0.96).
    status, body = await patch(gateway, red, {"action": "update_threshold", "threshold": 0.5})
    assert status == 200 and body["cluster"]["threshold"] == 0.5 and body["refiled"] == 0
    pinks = await upload(
        gateway, *((f"pink-{i}.png", colour_png(PINK, seed=50 + i)) for i in range(2))
    )
    await wait_done(pinks, db, storage_path)
    assert links_in(storage_path, red) == red_uploads | set(pinks)  # ~0.73 >= 0.5: they joined
    status, body = await patch(
        gateway, red, {"action": "update_threshold", "threshold": 0.92, "reevaluate": True}
    )
    assert status == 200 and body["refiled"] == 2 and body["cluster"]["member_count"] == 3
    await wait_done(pinks, db, storage_path)
    pink_cluster = await db.fetchval(
        "SELECT cluster_id FROM content c JOIN uploads u ON u.content_id = c.id WHERE u.id = $1",
        uuid.UUID(pinks[0]),
    )
    assert pink_cluster != red
    assert links_in(storage_path, pink_cluster) == set(pinks)
    assert links_in(storage_path, red) == red_uploads
    await assert_centroid_is_mean(db, red)

    # Reject: the members are filed again as if new; with red's threshold back at 0.5 they
    # join it, and their links move on disk.
    assert (await patch(gateway, red, {"action": "update_threshold", "threshold": 0.5}))[0] == 200
    status, body = await patch(gateway, pink_cluster, {"action": "reject"})
    assert status == 200 and body["rejected"] is True and body["refiled"] == 2
    await wait_done(pinks, db, storage_path)

    async def moved() -> bool:
        return links_in(storage_path, red) == red_uploads | set(pinks)

    await wait_for(moved, what="pink links in red's folder")
    assert not (storage_path / "media" / "clusters" / str(pink_cluster)).exists()
    await assert_centroid_is_mean(db, red)

    # Every change is in the audit trail, and the folders rebuilt from scratch are the same.
    actions = {
        r["action"] for r in await db.fetch("SELECT action FROM audit_log WHERE actor = 'admin'")
    }
    assert actions == {
        "cluster.rename",
        "cluster.confirm",
        "cluster.merge",
        "cluster.update_threshold",
        "cluster.reject",
    }
    before = folder_snapshot(storage_path)
    await rebuild(clusterer.pool, clusterer.storage, from_scratch=True)
    assert folder_snapshot(storage_path) == before


async def lone_cluster(db: asyncpg.Connection) -> uuid.UUID:
    """A cluster made in the database: commands that change it need no members."""
    cluster_id = uuid.uuid4()
    await db.execute("INSERT INTO models (id, dim) VALUES ('test/model', 3)")
    await db.execute(
        """INSERT INTO clusters (id, model_id, name, threshold, centroid_sum, centroid)
           VALUES ($1, 'test/model', 'cats', 0.7, '[1,0,0]', '[1,0,0]')""",
        cluster_id,
    )
    return cluster_id


async def test_cluster_changes_answer_400_when_a_value_cannot_be_stored(
    gateway: Gateway, clusterer: ClustererDeps, db: asyncpg.Connection
) -> None:
    cluster_id = await lone_cluster(db)
    deep = b'{"action": "rename", "name": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    for body, message in (
        # A `real` column rounds these to 0 or holds them only as subnormals.
        ({"action": "update_threshold", "threshold": 1e-300}, "32-bit float"),
        ({"action": "update_threshold", "threshold": 5e-324}, "32-bit float"),
        ({"action": "update_threshold", "threshold": 1e-39}, "32-bit float"),
        (b'{"action": "update_threshold", "threshold": 1e400}', "JSON"),
        (b'{"action": "update_threshold", "threshold": NaN}', "JSON"),
        ({"action": "rename", "name": "x\x00y"}, "NUL character"),
        (deep, "nested more than 64 levels"),
    ):
        status, error = await patch(gateway, cluster_id, body)
        assert status == 400, (body, error)
        assert message in orjson.dumps(error).decode(), (body, error)
        assert error["request_id"]
    row = await db.fetchrow("SELECT name, threshold FROM clusters WHERE id = $1", cluster_id)
    assert (row["name"], row["threshold"]) == ("cats", pytest.approx(0.7))
    # The smallest normal 32-bit float is a threshold the column holds, and is shown as such.
    status, body = await patch(
        gateway, cluster_id, {"action": "update_threshold", "threshold": 2e-38}
    )
    assert status == 200, body
    assert body["cluster"]["threshold"] == pytest.approx(2e-38, rel=1e-5)


async def test_clusterer_answers_400_when_a_command_holds_a_threshold_the_column_cannot(
    clusterer: ClustererDeps, db: asyncpg.Connection
) -> None:
    cluster_id = await lone_cluster(db)
    raw = orjson.dumps(
        {
            "cluster_id": str(cluster_id),
            "actor": "admin",
            "change": {"action": "update_threshold", "threshold": 1e-300},
        }
    )
    reply = ClusterCommandReply.model_validate_json(await answer(clusterer, raw))
    assert reply.status == 400 and reply.error and "threshold" in reply.error
    # Past the model (a sender that did not validate), the database's refusal is a 400 too.
    unchecked = ClusterCommand.model_construct(
        cluster_id=cluster_id,
        actor="admin",
        change=UpdateThreshold.model_construct(
            action="update_threshold", threshold=1e-300, reevaluate=False
        ),
    )
    with pytest.raises(CommandError) as error:
        await run(clusterer, unchecked)
    assert error.value.status == 400 and "threshold" in error.value.error
    assert await db.fetchval("SELECT threshold FROM clusters WHERE id = $1", cluster_id) == (
        pytest.approx(0.7)
    )
