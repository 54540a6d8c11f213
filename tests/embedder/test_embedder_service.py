"""The embedder end to end: gateway -> media.ingested -> embedder -> media.embedded."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import aio_pika
import asyncpg
import numpy as np
import orjson
import pytest
from numpy.typing import NDArray
from pgvector.asyncpg import register_vector
from PIL import Image
from prometheus_client import REGISTRY
from skimage import data as samples

from common.embed_client import TextEmbedClient
from common.messages import MediaIngested
from embedder import repo
from embedder.handlers import EmbedderDeps
from embedder.model import OnnxModel
from tests.conftest import make_jpeg, read_queue
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form

# The embedder reads content and stores thumbnails through the storage port: both backends.
pytestmark = pytest.mark.both_storage_backends


def jpeg_of(array: np.ndarray, quality: int = 90, scale: float = 1.0) -> bytes:
    image = Image.fromarray(array).convert("RGB")
    if scale != 1.0:
        image = image.resize((int(image.width * scale), int(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def sample(name: str) -> NDArray[np.uint8]:
    """One of scikit-image's sample photos, by name (its loaders carry no annotations)."""
    photo: NDArray[np.uint8] = getattr(samples, name)()
    return photo


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def upload(gateway: Gateway, *files: tuple[str, bytes]) -> list[str]:
    response = await gateway.client.post("/api/v1/ingest", data=form(*files))
    assert response.status == 202, await response.text()
    ids: list[str] = (await response.json())["system_ids"]
    return ids


async def content_of(db: asyncpg.Connection, upload_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT c.* FROM uploads u JOIN content c ON c.id = u.content_id WHERE u.id = $1",
        uuid.UUID(upload_id),
    )
    assert row is not None
    return row


async def wait_stage(
    db: asyncpg.Connection, upload_ids: list[str], stages: set[str], timeout: float = 30
) -> list[asyncpg.Record]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = [await content_of(db, u) for u in upload_ids]
        if all(r["stage"] in stages for r in rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, [r["stage"] for r in rows]
        await asyncio.sleep(0.1)


async def test_embedder_embeds_and_publishes_when_image_is_ingested(
    gateway: Gateway,
    embedder: EmbedderDeps,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    [upload_id] = await upload(gateway, ("cat.jpg", jpeg_of(sample("chelsea"))))
    [row] = await wait_stage(db, [upload_id], {"embedded"})
    assert (row["width"], row["height"], row["format"]) == (451, 300, "JPEG")
    assert row["phash"] is not None and len(row["phash"]) == 64  # bits
    thumbnail = await embedder.storage.read(row["thumbnail_key"], limit=1 << 20)
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert image.format == "JPEG" and max(image.size) == 256
    vector = await db.fetchval(
        "SELECT embedding::text FROM embeddings WHERE content_id = $1 AND model_id = $2",
        row["id"],
        embedder.model_id,
    )
    values = np.array(orjson.loads(vector), dtype=np.float32)
    assert values.shape == (embedder.dim,)
    assert abs(float(np.linalg.norm(values)) - 1.0) < 1e-4
    [event] = await read_queue(amqp, embedder.bus.specs[2].name, expect=1)
    body = orjson.loads(event.body)
    assert event.routing_key == "media.embedded.v1"
    assert body["content_id"] == str(row["id"]) and body["model_id"] == embedder.model_id
    status = await (await gateway.client.get(f"/api/v1/objects/{upload_id}")).json()
    assert status["stage"] == "embedded" and status["status"] == "processing"


async def test_embedder_batches_images_when_many_arrive_at_once(
    gateway: Gateway,
    embedder: EmbedderDeps,
    db: asyncpg.Connection,
) -> None:
    count_before = metric("embedder_batch_size_count", input="image")
    sum_before = metric("embedder_batch_size_sum", input="image")
    ids = await upload(gateway, *((f"{i}.jpg", make_jpeg(i, size=(64, 48))) for i in range(20)))
    await wait_stage(db, ids, {"embedded"})
    batches = metric("embedder_batch_size_count", input="image") - count_before
    images = metric("embedder_batch_size_sum", input="image") - sum_before
    assert images == 20
    assert batches < 20, "every image went through the model alone"


async def test_embedder_runs_model_once_when_same_bytes_uploaded_twice_and_redelivered(
    gateway: Gateway,
    embedder: EmbedderDeps,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    before = metric("embedder_items_total", input="image")
    image = make_jpeg(77)
    first = await upload(gateway, ("a.jpg", image))
    second = await upload(gateway, ("b.jpg", image))
    await wait_stage(db, first + second, {"embedded"})
    row = await content_of(db, first[0])
    # A redelivered event (a crash after commit, say) re-publishes without a second run.
    again = MediaIngested(
        content_id=row["id"],
        job_id=row["first_job_id"],
        sha256=row["sha256"],
        kind="image",
        mime_type="image/jpeg",
        size_bytes=row["size_bytes"],
    )
    await embedder.bus.publish(again.routing_key, again.to_bytes(), message_id="redelivered")
    events = await read_queue(amqp, embedder.bus.specs[2].name, expect=2, settle=0.5)
    assert len(events) == 2
    assert metric("embedder_items_total", input="image") - before == 1


async def test_embedder_labels_near_duplicates_when_photo_is_reencoded_or_resized(
    gateway: Gateway,
    embedder: EmbedderDeps,
    db: asyncpg.Connection,
) -> None:
    photo = sample("chelsea")
    [original] = await upload(gateway, ("cat.jpg", jpeg_of(photo, quality=95)))
    await wait_stage(db, [original], {"embedded"})
    copies = await upload(
        gateway,
        ("cat-q60.jpg", jpeg_of(photo, quality=60)),
        ("cat-half.jpg", jpeg_of(photo, quality=90, scale=0.5)),
    )
    others = await upload(
        gateway,
        ("coffee.jpg", jpeg_of(sample("coffee"))),
        ("astronaut.jpg", jpeg_of(sample("astronaut"))),
    )
    rows = await wait_stage(db, copies + others, {"embedded"})
    original_id = (await content_of(db, original))["id"]
    assert [r["near_duplicate_of"] for r in rows[:2]] == [original_id, original_id]
    assert [r["near_duplicate_of"] for r in rows[2:]] == [None, None]


async def test_embedder_labels_near_duplicates_when_copies_arrive_with_the_original(
    gateway: Gateway,
    embedder: EmbedderDeps,
    db: asyncpg.Connection,
) -> None:
    photo = sample("chelsea")
    uploads = await upload(
        gateway,
        ("cat.jpg", jpeg_of(photo, quality=95)),
        ("cat-q60.jpg", jpeg_of(photo, quality=60)),
        ("cat-q75.jpg", jpeg_of(photo, quality=75)),
        ("cat-half.jpg", jpeg_of(photo, quality=90, scale=0.5)),
        ("cat-3q.jpg", jpeg_of(photo, quality=90, scale=0.75)),
        ("coffee.jpg", jpeg_of(sample("coffee"))),
    )
    rows = await wait_stage(db, uploads, {"embedded"})
    cats, coffee = rows[:5], rows[5]
    # Embedded side by side, in one batch: whichever was saved first is the original.
    originals = [r for r in cats if r["near_duplicate_of"] is None]
    assert len(originals) == 1, [r["near_duplicate_of"] for r in cats]
    assert all(r["near_duplicate_of"] == originals[0]["id"] for r in cats if r != originals[0])
    assert coffee["near_duplicate_of"] is None


async def test_embedder_save_looks_up_the_nearest_phash_through_its_index(
    db: asyncpg.Connection,
) -> None:
    await register_vector(db)
    await db.execute("SET enable_seqscan = off")  # an empty table: show the index is usable
    args: tuple[object, ...]  # the statement's parameters, of every kind
    args = (
        uuid.uuid4(),
        1,
        1,
        "JPEG",
        "{}",
        "0" * 64,
        "k",
        None,
        8,
        ["m"],
        ["[1,1,1,1]"],
        [],
        [],
        [],
        [],
    )
    plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + repo.SAVE_STATEMENT, *args))
    assert "Index Scan using content_phash_hnsw" in plan, plan


def bomb_png() -> bytes:
    image = Image.new("1", (20_000, 20_000))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


async def test_embedder_fails_bad_images_permanently_while_good_ones_succeed(
    gateway: Gateway,
    embedder: EmbedderDeps,
    db: asyncpg.Connection,
) -> None:
    good = make_jpeg(5, size=(80, 60))
    truncated = make_jpeg(6, size=(300, 300))[:2000]
    corrupt = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20
    bad = [("truncated.jpg", truncated), ("corrupt.jpg", corrupt), ("bomb.png", bomb_png())]
    ids = await upload(gateway, ("good.jpg", good), *bad, ("good2.jpg", make_jpeg(8)))
    rows = await wait_stage(db, ids, {"embedded", "failed"})
    assert [r["stage"] for r in rows] == ["embedded", "failed", "failed", "failed", "embedded"]
    for row in rows[1:4]:
        assert row["error"].startswith("cannot decode image")
    deadline = asyncio.get_running_loop().time() + 10
    while await db.fetchval("SELECT count(*) FROM dead_letters") < 3:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    letters = await db.fetch("SELECT error, attempts, content_id FROM dead_letters")
    assert {r["content_id"] for r in letters} == {r["id"] for r in rows[1:4]}
    assert all(r["attempts"] == 1 for r in letters)  # permanent: never retried


async def test_text_rpc_answers_with_the_models_own_vector_when_asked(
    embedder: EmbedderDeps,
    tiny_clip_dir: Any,
) -> None:
    client = TextEmbedClient(embedder.bus, timeout=10)
    vectors = await client.embed(["a black cat on a sofa", "coffee"], embedder.model_id)
    direct = OnnxModel(tiny_clip_dir / "clip-tiny", providers=("cpu",)).embed_texts(
        ["a black cat on a sofa", "coffee"]
    )
    assert vectors.shape == direct.shape
    np.testing.assert_allclose(vectors, direct, atol=1e-5)


async def test_embedder_embeds_keyframes_when_video_is_ingested(
    gateway: Gateway,
    embedder: EmbedderDeps,
    db: asyncpg.Connection,
    tmp_path: Any,
) -> None:
    from tests.embedder.test_images import make_video

    path = tmp_path / "clip.mp4"
    make_video(path, gop=12)
    [upload_id] = await upload(gateway, ("clip.mp4", path.read_bytes()))
    [row] = await wait_stage(db, [upload_id], {"embedded"})
    assert row["kind"] == "video" and row["mime_type"] == "video/mp4"
    assert (row["width"], row["height"]) == (64, 48)
    assert abs(row["duration_s"] - 2.0) < 0.1
    frames = await db.fetch(
        "SELECT timestamp_s, embedding::text AS v FROM video_frames WHERE content_id = $1"
        " ORDER BY frame_index",
        row["id"],
    )
    assert len(frames) >= 2
    assert [f["timestamp_s"] for f in frames] == sorted(f["timestamp_s"] for f in frames)
    overall = await db.fetchval(
        "SELECT embedding::text FROM embeddings WHERE content_id = $1", row["id"]
    )
    vector = np.array(orjson.loads(overall), dtype=np.float32)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4


async def test_worker_probes_report_model_and_provider_when_running(
    embedder: EmbedderDeps,
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{embedder.probe_port}"
        async with session.get(f"{base}/live") as live:
            assert live.status == 200
        async with session.get(f"{base}/ready") as ready:
            assert ready.status == 200
        async with session.get(f"{base}/health") as health:
            body = await health.json()
            assert body["model_id"] == embedder.model_id
            assert body["provider"] == "CPUExecutionProvider"
            # The decoders started with the service, before any image arrived.
            assert body["decode_workers_alive"] == body["decode_workers"] == 2
        async with session.get(f"{base}/metrics") as metrics:
            text = await metrics.text()
            assert "# TYPE embedder_batch_size histogram" in text  # labelled: no samples yet
            assert "jobs_processed_total" in text


async def test_text_rpc_times_out_and_request_expires_when_no_embedder_serves(
    gateway: Gateway,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    import pytest

    from common.embed_client import EmbedError
    from common.rpc import RPC_QUEUE_ARGUMENTS
    from common.topology import text_rpc_queue

    # The queue exists (an embedder ran before) but nobody consumes it now.
    channel = await amqp.channel()
    name = text_rpc_queue(gateway.deps.settings.bus_queue_prefix, "some-model")
    await channel.declare_queue(
        name, durable=False, auto_delete=True, arguments=RPC_QUEUE_ARGUMENTS
    )
    client = TextEmbedClient(gateway.deps.bus, timeout=0.5)
    with pytest.raises(EmbedError, match=r"no text embedding by some-model within 0\.5 s"):
        await client.embed(["anyone there?"], "some-model")
    await asyncio.sleep(0.3)
    queue = await channel.declare_queue(name, passive=True)
    assert queue.declaration_result.message_count == 0  # expired, never answered late
    await channel.queue_delete(name)
    await channel.close()


async def test_text_query_finds_the_image_it_describes_when_model_has_known_meaning(
    gateway: Gateway,
    embedder_settings: Any,
    db: asyncpg.Connection,
    tmp_path: Any,
) -> None:
    from embedder.app import running
    from mammoth_export.colour_model import export_colour_model

    export_colour_model(tmp_path / "models" / "colour")
    settings = embedder_settings(model_dir=tmp_path / "models", embedding_model="colour")
    solid = {"red": (220, 20, 30), "green": (20, 200, 40), "blue": (30, 40, 210)}
    files = []
    for name, rgb in solid.items():
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), rgb).save(buffer, "PNG")
        files.append((f"{name}.png", buffer.getvalue()))
    async with running(settings) as deps:
        ids = await upload(gateway, *files)
        rows = await wait_stage(db, ids, {"embedded"})
        by_colour = {name: row["id"] for name, row in zip(solid, rows, strict=True)}
        client = TextEmbedClient(deps.bus, timeout=10)
        for query, expected in (("a red photo", "red"), ("BLUE", "blue"), ("green", "green")):
            model_id = deps.model_id
            [vector] = await client.embed([query], model_id)
            literal = "[" + ",".join(str(float(v)) for v in vector) + "]"
            nearest = await db.fetchval(
                """SELECT content_id FROM embeddings WHERE model_id = $1
                   ORDER BY embedding::vector(10) <=> $2::vector(10) LIMIT 1""",
                model_id,
                literal,
            )
            assert nearest == by_colour[expected], query
