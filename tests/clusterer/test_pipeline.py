"""Upload -> embedder (colour model) -> clusterer: media files itself into folders by kind."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import FormData
from PIL import Image

from clusterer.handlers import ClustererDeps
from common.messages import MediaAnalyzed
from embedder.handlers import EmbedderDeps
from mammoth_export.colour_model import COLOURS
from mammoth_export.colour_model import MODEL_ID as COLOUR_ID
from tests.clusterer.conftest import colour_png, folder_snapshot, wait_for
from tests.integration.conftest import Gateway

KINDS = ("red", "green", "blue")


def form(*files: tuple[str, bytes]) -> FormData:
    data = FormData(quote_fields=False)
    for name, content in files:
        data.add_field("files[]", content, filename=name, content_type="application/octet-stream")
    return data


async def upload(gateway: Gateway, *files: tuple[str, bytes]) -> list[str]:
    response = await gateway.client.post("/api/v1/ingest", data=form(*files))
    assert response.status == 202, await response.text()
    ids: list[str] = (await response.json())["system_ids"]
    return ids


async def wait_done(
    upload_ids: list[str], db: asyncpg.Connection, storage_path: Path, timeout: float = 30
) -> None:
    async def done() -> bool:
        stages = await db.fetch(
            """SELECT c.stage FROM uploads u JOIN content c ON c.id = u.content_id
               WHERE u.id = ANY($1::uuid[])""",
            [uuid.UUID(u) for u in upload_ids],
        )
        assert all(r["stage"] != "failed" for r in stages)
        return len(stages) == len(upload_ids) and all(r["stage"] == "clustered" for r in stages)

    await wait_for(done, what="every upload clustered", timeout=timeout)

    async def linked() -> bool:
        # Links are made right after the commit that files the content.
        links = await db.fetchval(
            """SELECT count(*) FROM uploads u JOIN content c ON c.id = u.content_id
               WHERE u.id = ANY($1::uuid[])""",
            [uuid.UUID(u) for u in upload_ids],
        )
        names = {p.split("/")[-1].split("_")[0] for p in folder_snapshot(storage_path)}
        return links == len(upload_ids) and {u for u in upload_ids} <= names

    await wait_for(linked, what="every upload linked")


async def cluster_of(db: asyncpg.Connection, upload_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        """SELECT cl.* FROM uploads u JOIN content c ON c.id = u.content_id
           JOIN clusters cl ON cl.id = c.cluster_id WHERE u.id = $1""",
        uuid.UUID(upload_id),
    )
    assert row is not None
    return row


async def test_clusterer_files_interleaved_kinds_into_their_own_clusters_when_uploaded(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    # Three kinds, interleaved, in two requests: every image ends in its kind's cluster.
    files = [
        (f"{kind}-{i}.png", colour_png(COLOURS[kind], seed=i)) for i in range(4) for kind in KINDS
    ]
    ids = await upload(gateway, *files[:6]) + await upload(gateway, *files[6:])
    await wait_done(ids, db, storage_path)
    by_kind: dict[str, set[uuid.UUID]] = {}
    for (name, _), upload_id in zip(files, ids, strict=True):
        by_kind.setdefault(name.split("-")[0], set()).add((await cluster_of(db, upload_id))["id"])
    assert all(len(clusters) == 1 for clusters in by_kind.values()), by_kind
    assert len({next(iter(c)) for c in by_kind.values()}) == 3
    clusters = await db.fetch("SELECT * FROM clusters ORDER BY name")
    # Placeholders are the best zero-shot label: the colour word, through the text RPC.
    assert [
        (c["name"], c["name_source"], c["provisional"], c["member_count"]) for c in clusters
    ] == [
        ("blue", "placeholder", True, 4),
        ("green", "placeholder", True, 4),
        ("red", "placeholder", True, 4),
    ]
    # New clusters have no threshold of their own: they follow the model's calibration.
    assert {c["threshold"] for c in clusters} == {None}
    calibration = orjson.loads(
        await db.fetchval("SELECT calibration::text FROM models WHERE id = $1", COLOUR_ID)
    )
    assert calibration["prior"] == pytest.approx(0.9)  # the manifest's, as a prior
    assert calibration["source"] == "data" and calibration["items"] == 12

    # Each folder holds one link per upload to the stored file, and one per thumbnail.
    links = folder_snapshot(storage_path)
    for (name, _), upload_id in zip(files, ids, strict=True):
        cluster = await cluster_of(db, upload_id)
        key = await db.fetchval(
            "SELECT c.storage_key FROM uploads u JOIN content c ON c.id = u.content_id WHERE u.id = $1",
            uuid.UUID(upload_id),
        )
        assert links.get(f"media/clusters/{cluster['id']}/{upload_id}_{name}") == key, links
        assert f"media/clusters/{cluster['id']}/thumbnails/{upload_id}.jpg" in links
    assert len(links) == 2 * len(files)

    # A fourth kind opens a fourth provisional cluster, named by its placeholder first...
    [yellow] = await upload(gateway, ("sun.png", colour_png(COLOURS["yellow"], seed=99)))
    await wait_done([yellow], db, storage_path)
    cluster = await cluster_of(db, yellow)
    assert (cluster["name"], cluster["provisional"], cluster["member_count"]) == ("yellow", True, 1)
    assert await db.fetchval("SELECT count(*) FROM clusters") == 4

    # ...and by the analysis once it lands.
    content_id = await db.fetchval(
        "SELECT content_id FROM uploads WHERE id = $1", uuid.UUID(yellow)
    )
    analysed = MediaAnalyzed(
        content_id=content_id,
        job_id=uuid.uuid4(),
        vlm_model="gemini-test",
        suggested_cluster_name="  Sunny   things ",
    )
    await clusterer.bus.publish(analysed.routing_key, analysed.to_bytes(), message_id="a1")

    async def renamed() -> bool:
        name: str | None = await db.fetchval(
            "SELECT name FROM clusters WHERE id = $1", cluster["id"]
        )
        return name == "Sunny things"

    await wait_for(renamed, what="the VLM's name")
    assert (
        await db.fetchval("SELECT name_source FROM clusters WHERE id = $1", cluster["id"]) == "vlm"
    )

    # A second upload of the same bytes lands in the same folder, without a second stored file.
    objects_before = sorted(p for p in (storage_path / "objects").rglob("*") if p.is_file())
    [again] = await upload(gateway, ("red-again.png", files[0][1]))
    red = await cluster_of(db, ids[0])

    async def linked() -> bool:
        return f"media/clusters/{red['id']}/{again}_red-again.png" in folder_snapshot(storage_path)

    await wait_for(linked, what="the second upload's link")
    assert (await cluster_of(db, again))["id"] == red["id"]
    assert sorted(p for p in (storage_path / "objects").rglob("*") if p.is_file()) == objects_before
    snapshot = folder_snapshot(storage_path)
    assert (
        snapshot[f"media/clusters/{red['id']}/{again}_red-again.png"]
        == snapshot[f"media/clusters/{red['id']}/{ids[0]}_{files[0][0]}"]
    )
    # The worker's own probes and metrics (the cluster gauge is refreshed by the sweep).
    probe = f"http://127.0.0.1:{clusterer.probe_port}"
    metrics = ""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{probe}/ready") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {
                "database": True,
                "bus": True,
                "consuming": True,
                "storage": True,
                "accepting": True,  # false once it drains on SIGTERM
            }

        async def counted() -> bool:
            nonlocal metrics
            async with session.get(f"{probe}/metrics") as response:
                metrics = await response.text()
            return 'clusters{model="mammothbox/colour-test",provisional="true"} 4.0' in metrics

        await wait_for(counted, what="the cluster gauge", timeout=10)
    for name in (
        'clusters{model="mammothbox/colour-test",provisional="true"} 4.0',
        "clusters_created_total",
        'cluster_assignment_seconds_count{outcome="joined"}',
        'job_processing_duration_seconds_count{service="clusterer"',
        'jobs_processed_total{outcome="ok",service="clusterer"}',
    ):
        assert name in metrics, name

    job_id = (await (await gateway.client.get(f"/api/v1/objects/{again}")).json())["job_id"]
    status = await (await gateway.client.get(f"/api/v1/ingest/{job_id}/status")).json()
    assert status["status"] == "done"


def reencoded(png: bytes, fmt: str) -> bytes:
    """The same picture in another format (animated ones: it, then two other frames)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    if fmt in ("WEBP", "PNG"):
        others = [Image.new("RGB", image.size, c) for c in ("white", "black")]
        image.save(out, format=fmt, save_all=True, append_images=others, duration=80, lossless=True)
    else:
        image.save(out, format=fmt, quality=90)
    return out.getvalue()


async def test_phone_formats_end_clustered_with_the_pngs_of_their_kind(
    gateway: Gateway,
    colour_embedder: EmbedderDeps,
    clusterer: ClustererDeps,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    # HEIC (iPhones), AVIF, animated WebP and APNG: sniffed, decoded in the decoder pool and
    # filed like any PNG of the same colour.
    pngs = [(f"red-{i}.png", colour_png(COLOURS["red"], seed=200 + i)) for i in range(3)]
    others = [
        (f"red.{fmt.lower()}", reencoded(colour_png(COLOURS["red"], seed=300 + n), fmt))
        for n, fmt in enumerate(("HEIF", "AVIF", "WEBP", "PNG"))
    ]
    ids = await upload(gateway, *pngs, *others)
    await wait_done(ids, db, storage_path)
    clusters = {(await cluster_of(db, upload_id))["id"] for upload_id in ids}
    assert len(clusters) == 1, "every red picture is in one cluster, whatever its format"
    facts = await db.fetch(
        """SELECT c.mime_type, c.format, c.width, c.height FROM uploads u
           JOIN content c ON c.id = u.content_id WHERE u.id = ANY($1::uuid[])""",
        [uuid.UUID(u) for u in ids[3:]],
    )
    assert sorted((r["mime_type"], r["format"]) for r in facts) == [
        ("image/apng", "PNG"), ("image/avif", "AVIF"), ("image/heic", "HEIF"), ("image/webp", "WEBP")
    ]  # fmt: skip
    assert {(r["width"], r["height"]) for r in facts} == {(48, 40)}
