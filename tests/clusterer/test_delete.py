"""Deleting uploads through HTTP with the real pipeline running: the upload goes at once, its
content (row, vector, cluster membership, links, thumbnail, bytes) once nothing refers to it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from clusterer.handlers import ClustererDeps
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from schemer.deps import SchemerDeps
from tests.clusterer.conftest import colour_png, folder_snapshot, wait_for
from tests.clusterer.test_pipeline import form, upload, wait_done
from tests.integration.conftest import Gateway
from tests.schemer.conftest import (  # noqa: F401 (fixtures)
    decide,
    ingest,
    read_documents,
    schemer,
    schemer_settings,
    start_schemer,
    wait_job,
)


def stored_objects(storage: Path) -> set[str]:
    return {
        p.relative_to(storage).as_posix() for p in (storage / "objects").rglob("*") if p.is_file()
    }


async def content_of(db: asyncpg.Connection, upload_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT c.* FROM uploads u JOIN content c ON c.id = u.content_id WHERE u.id = $1",
        uuid.UUID(upload_id),
    )
    assert row is not None
    return row


async def purged(db: asyncpg.Connection, content_id: uuid.UUID) -> bool:
    return bool(
        await db.fetchval(
            "SELECT NOT EXISTS (SELECT FROM content WHERE id = $1)"
            " AND EXISTS (SELECT FROM content_tombstones WHERE content_id = $1)",
            content_id,
        )
    )


async def cluster_sum(db: asyncpg.Connection, cluster_id: uuid.UUID) -> tuple[int, np.ndarray]:
    row = await db.fetchrow(
        "SELECT member_count, centroid_sum::text AS s FROM clusters WHERE id = $1", cluster_id
    )
    assert row is not None
    return row["member_count"], np.array([float(x) for x in row["s"].strip("[]").split(",")])


async def members_sum(db: asyncpg.Connection, cluster_id: uuid.UUID) -> tuple[int, np.ndarray]:
    rows = await db.fetch(
        """SELECT e.embedding::text AS v FROM content c JOIN embeddings e ON e.content_id = c.id
           WHERE c.cluster_id = $1""",
        cluster_id,
    )
    vectors = [np.array([float(x) for x in r["v"].strip("[]").split(",")]) for r in rows]
    return len(rows), np.sum(vectors, axis=0)


async def delete(gateway: Gateway, path: str, expect: int = 200, **headers: str) -> Any:
    response = await gateway.client.delete(path, headers=headers)
    assert response.status == expect, await response.text()
    return await response.json()


async def test_deleting_one_of_two_uploads_of_the_same_bytes_keeps_the_content_for_the_other(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    red = colour_png(COLOURS["red"], seed=1)
    [first] = await upload(gateway, ("a.png", red))
    [second] = await upload(gateway, ("b.png", red))
    others = await upload(
        gateway, *((f"r{i}.png", colour_png(COLOURS["red"], seed=10 + i)) for i in range(3))
    )
    await wait_done([first, second, *others], db, storage_path)
    content = await content_of(db, first)
    cluster_id = content["cluster_id"]

    answer = await delete(gateway, f"/api/v1/objects/{first}")
    assert answer["deleted_uploads"] == [first]
    assert (await gateway.client.get(f"/api/v1/objects/{first}")).status == 404
    assert (await gateway.client.get(f"/api/v1/objects/{first}/content")).status == 404
    await delete(gateway, f"/api/v1/objects/{first}", expect=404)  # gone is gone

    # The other upload still works: its bytes, thumbnail, cluster; only the link went.
    async def unlinked() -> bool:
        return not any(first in p for p in folder_snapshot(storage_path))

    await wait_for(unlinked, what="the deleted upload's links removed")
    response = await gateway.client.get(f"/api/v1/objects/{second}/content")
    assert response.status == 200 and await response.read() == red
    assert response.headers["Cache-Control"] == "private, no-cache"
    assert (await gateway.client.get(f"/api/v1/objects/{second}/thumbnail")).status == 200
    assert (await content_of(db, second))["cluster_id"] == cluster_id
    assert any(second in p for p in folder_snapshot(storage_path))
    count, _ = await cluster_sum(db, cluster_id)
    assert count == 4  # the content is still one member
    audit = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'upload.delete' AND entity_id = $1", first
    )
    assert audit == 1


async def test_deleting_the_last_upload_leaves_no_row_vector_link_or_object(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    files = [(f"g{i}.png", colour_png(COLOURS["green"], seed=i)) for i in range(4)]
    lonely = ("blue.png", colour_png(COLOURS["blue"], seed=5))
    ids = await upload(gateway, *files, lonely)
    await wait_done(ids, db, storage_path)
    before = stored_objects(storage_path)
    victim = await content_of(db, ids[0])
    cluster_id = victim["cluster_id"]
    job_id = await db.fetchval("SELECT job_id FROM uploads WHERE id = $1", uuid.UUID(ids[0]))

    await delete(gateway, f"/api/v1/objects/{ids[0]}")
    await wait_for(lambda: purged(db, victim["id"]), what="the content purged")
    assert (
        await db.fetchval("SELECT count(*) FROM embeddings WHERE content_id = $1", victim["id"])
        == 0
    )
    assert victim["storage_key"] not in stored_objects(storage_path)
    assert victim["thumbnail_key"] not in stored_objects(storage_path)
    assert stored_objects(storage_path) == before - {victim["storage_key"], victim["thumbnail_key"]}
    assert not any(ids[0] in p for p in folder_snapshot(storage_path))
    # The cluster's sum and count are exactly its remaining members'.
    count, total = await cluster_sum(db, cluster_id)
    n, expected = await members_sum(db, cluster_id)
    assert count == n == 3
    np.testing.assert_allclose(total, expected, atol=1e-4)

    # A job's deletion takes the rest of it; the blue cluster, left empty, goes with its folder.
    blue = await content_of(db, ids[4])
    answer = await delete(gateway, f"/api/v1/ingest/{job_id}")
    assert sorted(answer["deleted_uploads"]) == sorted(ids[1:])
    assert answer["deleted_jobs"] == [str(job_id)]
    assert (await gateway.client.get(f"/api/v1/ingest/{job_id}/status")).status == 404

    async def all_gone() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM content") == 0)

    await wait_for(all_gone, what="every content purged")
    assert await db.fetchval("SELECT count(*) FROM clusters") == 0
    assert await db.fetchval("SELECT count(*) FROM embeddings") == 0
    assert await db.fetchval("SELECT count(*) FROM uploads") == 0

    async def store_empty() -> bool:
        return not stored_objects(storage_path) and not folder_snapshot(storage_path)

    await wait_for(store_empty, what="no object or link left")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'cluster.delete' AND entity_id = $1",
            str(blue["cluster_id"]),
        )
        == 1
    )


async def test_a_delete_during_processing_is_not_undone_when_the_pipeline_finishes(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    # Each upload is deleted at once, while the embedder and clusterer are still on it.
    ids = []
    for i in range(12):
        [upload_id] = await upload(gateway, (f"y{i}.png", colour_png(COLOURS["yellow"], seed=i)))
        await delete(gateway, f"/api/v1/objects/{upload_id}")
        ids.append(upload_id)
    keep = await upload(gateway, ("kept.png", colour_png(COLOURS["yellow"], seed=99)))
    await wait_done(keep, db, storage_path)

    async def settled() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM content") == 1)

    await wait_for(settled, what="only the kept upload's content left", timeout=30)
    await asyncio.sleep(1.0)  # anything still in flight would land now
    assert await db.fetchval("SELECT count(*) FROM content") == 1
    assert await db.fetchval("SELECT count(*) FROM embeddings") == 1
    [cluster] = await db.fetch("SELECT member_count FROM clusters")
    assert cluster["member_count"] == 1
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    [kept_content] = await db.fetch("SELECT storage_key, thumbnail_key FROM content")
    assert stored_objects(storage_path) == {
        kept_content["storage_key"],
        kept_content["thumbnail_key"],
    }
    assert all(keep[0] in p for p in folder_snapshot(storage_path))


async def test_an_owners_full_delete_leaves_other_owners_untouched(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]],
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    schemer: SchemerDeps,  # noqa: F811
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    keys = "alice-key-0123456789:write:alice,bob-key-0123456789:write:bob,root-key-0123456789:admin"
    async with start_gateway(api_keys=keys.split(",")) as gw:
        alice = {"Authorization": "Bearer alice-key-0123456789"}
        bob = {"Authorization": "Bearer bob-key-0123456789"}
        shared = colour_png(COLOURS["red"], seed=3)

        async def send(headers: dict[str, str], *files: tuple[str, bytes]) -> list[str]:
            response = await gw.client.post("/api/v1/ingest", data=form(*files), headers=headers)
            assert response.status == 202, await response.text()
            return list((await response.json())["system_ids"])

        a_media = await send(
            alice, ("shared.png", shared), ("a.png", colour_png(COLOURS["red"], seed=4))
        )
        b_media = await send(bob, ("shared.png", shared))
        for headers, prefix in ((alice, "A"), (bob, "B")):
            response = await gw.client.post(
                "/api/v1/ingest?collection=orders",
                json=[{"sku": f"{prefix}{i}", "price": i} for i in range(5)],
                headers=headers,
            )
            assert response.status == 202, await response.text()
        await wait_done(a_media + b_media, db, storage_path)

        async def stored() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM json_documents") == 10)

        await wait_for(stored, what="both owners' documents stored")
        # Bob's key may not delete Alice's upload (it is not his to see).
        response = await gw.client.delete(f"/api/v1/objects/{a_media[1]}", headers=bob)
        assert response.status == 404
        # Nor may an owner's key delete an owner.
        response = await gw.client.delete("/api/v1/admin/owners/alice", headers=alice)
        assert response.status == 403

        response = await gw.client.delete(
            "/api/v1/admin/owners/alice", headers={"Authorization": "Bearer root-key-0123456789"}
        )
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert answer["deleted_uploads"] == 7 and answer["owner"] == "alice"

        async def alice_gone() -> bool:
            left = await db.fetchval(
                """SELECT (SELECT count(*) FROM uploads WHERE owner = 'alice')
                        + (SELECT count(*) FROM jobs WHERE owner = 'alice')
                        + (SELECT count(*) FROM json_collections WHERE owner = 'alice')"""
            )
            return bool(left == 0 and await db.fetchval("SELECT count(*) FROM content") == 6)

        await wait_for(alice_gone, what="alice's data gone, bob's content left")
        # Bob's shared picture is whole; his collection holds his five documents.
        response = await gw.client.get(f"/api/v1/objects/{b_media[0]}/content", headers=bob)
        assert response.status == 200 and await response.read() == shared
        assert await db.fetchval("SELECT count(*) FROM uploads WHERE owner = 'bob'") == 6
        [collection] = await db.fetch("SELECT * FROM json_collections")
        assert collection["owner"] == "bob" and collection["document_count"] == 5
        assert await db.fetchval("SELECT count(*) FROM content_tombstones") == 1 + 5


async def test_deleted_json_uploads_leave_their_collection_table_and_count(
    gateway: Gateway,
    schemer: SchemerDeps,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    documents = [{"sku": f"S{i}", "price": i, "tags": ["a"]} for i in range(6)]
    job = await ingest(gateway, documents, collection="orders")
    await wait_job(gateway, job["job_id"])
    collection_id = await db.fetchval("SELECT id FROM json_collections WHERE name = 'orders'")
    await decide(gateway, str(collection_id), "approve")
    table = await db.fetchval(
        "SELECT table_name FROM json_collections WHERE id = $1", collection_id
    )
    assert await db.fetchval(f'SELECT count(*) FROM collections."{table}"') == 6
    # The same document twice: one content, two uploads.
    again = await ingest(gateway, [documents[0]], collection="orders")
    await wait_job(gateway, again["job_id"])

    first, second = job["system_ids"][0], again["system_ids"][0]
    await delete(gateway, f"/api/v1/objects/{first}")
    # Gone from the collection's view at once, before the schemer has removed the row.
    names = {d["system_id"] for d in await read_documents(gateway, "orders")}
    assert first not in names and second in names and len(names) == 6

    async def row_gone() -> bool:
        left = await db.fetchval(
            f'SELECT count(*) FROM collections."{table}" WHERE _upload_id = $1', uuid.UUID(first)
        )
        return bool(left == 0)

    await wait_for(row_gone, what="the table row deleted")
    assert (
        await db.fetchval(
            "SELECT document_count FROM json_collections WHERE id = $1", collection_id
        )
        == 6
    )
    # Its content stays for the second upload; deleting that one purges it.
    content_id = await db.fetchval(
        "SELECT content_id FROM uploads WHERE id = $1", uuid.UUID(second)
    )
    assert content_id is not None
    await delete(gateway, f"/api/v1/objects/{second}")
    await wait_for(lambda: purged(db, content_id), what="the JSON content purged")
    assert await db.fetchval(f'SELECT count(*) FROM collections."{table}"') == 5
    assert (
        await db.fetchval(
            "SELECT document_count FROM json_collections WHERE id = $1", collection_id
        )
        == 5
    )
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_hostile_deletes_get_a_clear_error_and_delete_nothing(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]], db: asyncpg.Connection
) -> None:
    keys = "reader-key-0123456789:read,writer-key-0123456789:write:w,root-key-0123456789:admin"
    async with start_gateway(api_keys=keys.split(",")) as gw:
        writer = {"Authorization": "Bearer writer-key-0123456789"}
        response = await gw.client.post(
            "/api/v1/ingest",
            data=form(("a.png", colour_png(COLOURS["red"], seed=1))),
            headers=writer,
        )
        [upload_id] = (await response.json())["system_ids"]
        cases = [
            ("/api/v1/objects/not-a-uuid", writer, 400),
            ("/api/v1/objects/%00", writer, 400),
            (f"/api/v1/ingest/{'9' * 5000}", writer, 400),
            (f"/api/v1/objects/{uuid.uuid4()}", writer, 404),
            (f"/api/v1/ingest/{uuid.uuid4()}", writer, 404),
            (f"/api/v1/objects/{upload_id}", {}, 401),
            (
                f"/api/v1/objects/{upload_id}",
                {"Authorization": "Bearer reader-key-0123456789"},
                403,
            ),
            ("/api/v1/admin/owners/w", writer, 403),
            (
                f"/api/v1/admin/owners/{'x' * 201}",
                {"Authorization": "Bearer root-key-0123456789"},
                400,
            ),
            ("/api/v1/admin/owners/a%01b", {"Authorization": "Bearer root-key-0123456789"}, 400),
        ]
        for path, headers, status in cases:
            response = await gw.client.delete(path, headers=headers)
            assert response.status == status, (path, await response.text())
            assert "error" in await response.json()
        assert await db.fetchval("SELECT count(*) FROM uploads") == 1
        assert (
            await db.fetchval(
                "SELECT count(*) FROM outbox WHERE routing_key = 'uploads.deleted.v1'"
            )
            == 0
        )
