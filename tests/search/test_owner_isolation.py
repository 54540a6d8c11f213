"""Owner isolation across every GET route the gateway documents, clusters included."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from clusterer.handlers import ClustererDeps
from common.messages import MediaAnalyzed, MediaUploaded
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from tests.clusterer.conftest import colour_png, wait_for
from tests.clusterer.test_pipeline import wait_done
from tests.integration.test_ingest import form
from tests.search.test_auth import ALICE, BOB, KEYS, ROOT, auth

PATH_PARAMETER = re.compile(r"\{(\w+)\}")


async def test_every_get_route_hides_an_owners_data_from_another_when_keys_are_owner_bound(
    start_gateway: Callable[..., Any],
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    start_schemer: Callable[..., Any],
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    async with start_gateway(api_keys=KEYS, admin_api_key=ROOT) as gateway, start_schemer():
        client = gateway.client

        async def ingest(key: str, *files: tuple[str, bytes]) -> Any:
            response = await client.post("/api/v1/ingest", data=form(*files), headers=auth(key))
            assert response.status == 202, await response.text()
            return await response.json()

        async def content_of(upload_id: str) -> asyncpg.Record:
            row = await db.fetchrow(
                """SELECT c.id, c.sha256, c.cluster_id FROM uploads u
                   JOIN content c ON c.id = u.content_id WHERE u.id = $1""",
                uuid.UUID(upload_id),
            )
            assert row is not None
            return row

        red0, red1 = colour_png(COLOURS["red"], 1), colour_png(COLOURS["red"], 2)
        green, blue = colour_png(COLOURS["green"], 3), colour_png(COLOURS["blue"], 4)
        # Alice's first red image opens the red cluster (its placeholder comes from it).
        first = await ingest(ALICE, ("alice-red0.png", red0))
        await wait_done(first["system_ids"], db, storage_path)
        second = await ingest(
            ALICE,
            ("alice-red1.png", red1),
            ("alice-green0.png", green),
            ("alice-doc.json", b'{"note": "a1ice-s3cret"}'),
        )
        await wait_done(second["system_ids"][:2], db, storage_path)
        alice_uploads = first["system_ids"] + second["system_ids"]
        red0_content, red1_content, green_content, json_content = [
            await content_of(u) for u in alice_uploads
        ]
        red, green_cluster = red0_content["cluster_id"], green_content["cluster_id"]
        # Alice's JSON document reaches a collection of hers (staged, then in its table).
        find_collection = "SELECT id, name FROM json_collections WHERE owner = 'alice'"
        await wait_for(lambda: db.fetchrow(find_collection), what="Alice's collection")
        collection = await db.fetchrow(find_collection)
        assert collection is not None
        response = await client.post(
            f"/api/v1/schemas/{collection['id']}/approve", headers=auth(ROOT)
        )
        assert response.status == 202, await response.text()
        await wait_for(
            lambda: db.fetchval(
                "SELECT status = 'approved' FROM json_collections WHERE id = $1", collection["id"]
            ),
            what="Alice's collection approved",
        )
        assert red1_content["cluster_id"] == red and green_cluster not in (None, red)

        # Bob's blue image, and the very bytes of Alice's second red one: shared content is
        # processed once, so his upload of it is done at once and sits in the red cluster.
        bob = await ingest(BOB, ("bob-blue0.png", blue))
        copy = await ingest(BOB, ("bob-copy.png", red1))
        assert copy["status"] == "done"
        await wait_done(bob["system_ids"] + copy["system_ids"], db, storage_path)
        # The new upload of stored media got its media.uploaded event, built from the model.
        body = await db.fetchval(
            """SELECT body FROM outbox
               WHERE routing_key = $1 AND position($2 IN convert_from(body, 'UTF8')) > 0""",
            MediaUploaded.routing_key,
            copy["system_ids"][0],
        )
        event = MediaUploaded.model_validate_json(body)
        assert (str(event.upload_id), event.content_id, str(event.job_id)) == (
            copy["system_ids"][0],
            red1_content["id"],
            copy["job_id"],
        )

        # The VLM names the red cluster from its reading of Alice's first red image.
        analysed = MediaAnalyzed(
            content_id=red0_content["id"],
            job_id=uuid.UUID(first["job_id"]),
            vlm_model="gemini-test",
            suggested_cluster_name="Alice crimson sofa",
        )
        await clusterer.bus.publish(
            analysed.routing_key, analysed.to_bytes(), message_id=str(analysed.message_id)
        )

        async def named() -> bool:
            name = await db.fetchval("SELECT name FROM clusters WHERE id = $1", red)
            return bool(name == "Alice crimson sofa")

        await wait_for(named, what="the red cluster named by the VLM")
        # A dead letter of Alice's job, as the recorder stores it.
        await db.execute(
            """INSERT INTO dead_letters (message_id, queue, routing_key, body, error, job_id,
                                         content_id)
               VALUES ('alice-m1', 'q', 'media.ingested.v1', '\\x7b7d', 'boom', $1, $2)""",
            uuid.UUID(second["job_id"]),
            green_content["id"],
        )

        # Nothing of these may reach Bob: Alice's ids, the content only she holds, its name.
        secrets = {
            "alice",
            "a1ice-s3cret",
            "Alice crimson sofa",
            str(green_cluster),
            first["job_id"],
            second["job_id"],
            *alice_uploads,
            *(str(c["id"]) for c in (red0_content, green_content, json_content)),
            *(c["sha256"] for c in (red0_content, green_content, json_content)),
            str(collection["id"]),
        }
        ids = {
            "job_id": [first["job_id"], second["job_id"]],
            "object_id": alice_uploads,
            "cluster_id": [str(green_cluster), str(red)],
            "schema_id": [str(collection["id"])],
            "name": [collection["name"]],
        }
        # Query strings for routes that need one; each other route is called bare.
        queries = {
            "/api/v1/search": [
                f"like={alice_uploads[0]}",
                "query=a%20red%20photo&threshold=-1&limit=100",
                f"query=a%20green%20photo&threshold=-1&cluster_id={green_cluster}",
                f"query=a%20red%20photo&threshold=-1&cluster_id={red}",
            ],
            "/api/v1/admin/dlq": ["", "state=all"],
            "/api/v1/collections/{name}/documents": ["", "owner=alice", "where=note=a1ice-s3cret"],
        }
        served = await client.get("/api/v1/openapi.json", headers=auth(BOB))
        document = await served.json()
        routed = {
            r.resource.canonical
            for r in client.app.router.routes()
            if r.method == "GET" and r.resource is not None
        }
        documented = {p for p, operations in document["paths"].items() if "get" in operations}
        assert routed <= documented, f"GET routes missing from the OpenAPI document: {routed}"
        answers: dict[str, int] = {}
        called = set()
        for path in sorted(documented):
            names = PATH_PARAMETER.findall(path)
            unknown = set(names) - set(ids)
            assert not unknown, f"{path}: fill {unknown} with Alice's ids in this test"
            for values in itertools.product(*(ids[n] for n in names)):
                concrete = path
                for name, value in zip(names, values, strict=True):
                    concrete = concrete.replace(f"{{{name}}}", value)
                for query in queries.get(path, [""]):
                    url = f"{concrete}?{query}" if query else concrete
                    response = await client.get(url, headers=auth(BOB))
                    text = (await response.read()).decode("utf-8", "replace")
                    # Proposals name every owner's clusters, a model switch is everyone's: a
                    # bound key is refused them.
                    refused = ("/api/v1/clusters/proposals", "/api/v1/admin/model-switch")
                    allowed = (403,) if path in refused else (200, 404)
                    assert response.status in allowed, (url, response.status, text)
                    leaked = sorted(s for s in secrets if s in text)
                    assert not leaked, (url, leaked)
                    answers[url] = response.status
                    called.add(path)
        assert called == documented
        # Everything of Alice's, by id, is as good as absent; the shared cluster is Bob's view.
        for url, status in answers.items():
            alices = (*ids["job_id"], *ids["object_id"], str(green_cluster), *ids["schema_id"])
            if any(v in url for v in alices) or "/collections/" in url:
                assert status == 404 or "search" in url, url
        assert answers[f"/api/v1/clusters/{red}"] == 200

        # Clusters as Bob: only his counts, thumbnails and members; a neutral name for the one
        # named from Alice's photo.
        response = await client.get("/api/v1/clusters", headers=auth(BOB))
        listed = {c["id"]: c for c in (await response.json())["clusters"]}
        blue_cluster = (await content_of(bob["system_ids"][0]))["cluster_id"]
        assert set(listed) == {str(red), str(blue_cluster)}
        shared = listed[str(red)]
        assert shared["member_count"] == 1
        assert shared["name"] == f"cluster {red.hex[:8]}" and shared["name_source"] == "placeholder"
        assert shared["thumbnails"] == [f"/api/v1/objects/{copy['system_ids'][0]}/thumbnail"]
        assert listed[str(blue_cluster)]["member_count"] == 1
        assert listed[str(blue_cluster)]["name"] == "blue"  # made from Bob's own image
        response = await client.get(f"/api/v1/clusters/{red}", headers=auth(BOB))
        one = await response.json()
        assert (one["member_count"], one["members_total"]) == (1, 1)
        assert [m["system_id"] for m in one["members"]] == copy["system_ids"]
        assert one["name"] == shared["name"]
        response = await client.get(
            "/api/v1/search?query=a%20red%20photo&threshold=-1", headers=auth(BOB)
        )
        hits = (await response.json())["results"]
        assert [h["id"] for h in hits if h["cluster"]["id"] == str(red)] == copy["system_ids"]
        assert all(h["cluster"]["name"] != "Alice crimson sofa" for h in hits)
        # Bob's own object says what it is made of: the model that embedded it, its cluster
        # (by the name Bob may see); Alice's, the name made from her photo.
        response = await client.get(f"/api/v1/objects/{copy['system_ids'][0]}", headers=auth(BOB))
        bobs = await response.json()
        assert bobs["cluster"] == {"id": str(red), "name": shared["name"]}
        assert [e["dim"] for e in bobs["embeddings"]] == [colour_embedder.dim]
        assert bobs["embeddings"][0]["model_id"] == colour_embedder.model_id
        response = await client.get(f"/api/v1/objects/{alice_uploads[1]}", headers=auth(ALICE))
        assert (await response.json())["cluster"]["name"] == "Alice crimson sofa"

        # Alice sees her own name and counts; the unbound admin key sees the cluster as stored.
        response = await client.get(f"/api/v1/clusters/{red}", headers=auth(ALICE))
        mine = await response.json()
        assert (mine["name"], mine["member_count"], mine["members_total"]) == (
            "Alice crimson sofa",
            2,
            2,
        )
        response = await client.get(f"/api/v1/clusters/{red}", headers=auth(ROOT))
        everyone = await response.json()
        assert (everyone["name"], everyone["name_source"]) == ("Alice crimson sofa", "vlm")
        assert (everyone["member_count"], everyone["members_total"]) == (2, 3)

        # Once an admin confirms the name, it is every owner's to see.
        response = await client.patch(
            f"/api/v1/clusters/{red}", json={"action": "confirm"}, headers=auth(ROOT)
        )
        assert response.status == 200, await response.text()
        response = await client.get(f"/api/v1/clusters/{red}", headers=auth(BOB))
        assert (await response.json())["name"] == "Alice crimson sofa"
