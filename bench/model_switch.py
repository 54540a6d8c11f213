#!/usr/bin/env python3
"""A model switch's backfill against the embedder's ordinary rate, and what it does to the
latency of new uploads.

In one run, on the same stored photos (distinct ~640x480 JPEGs cut from real photos):

1. ordinary: an embedder on the next model alone embeds N ingested images (images/s);
2. backfill: in another database the same N are embedded by the active model first (not
   timed), then an embedder holding both models backfills them with the next one, while new
   uploads arrive at --live-rate a second (each embedded by both models): backfill images/s,
   and each new upload's latency from its media.ingested to its row's `embedded`;
3. idle: the same new-upload load on the same embedder once the backfill is done (p95 baseline).

Targets (issue 18): backfill >= 80 % of the ordinary rate, new uploads' p95 within 2x idle.

    .venv/bin/python bench/model_switch.py                 # 1500 images, 4 new uploads/s
    .venv/bin/python bench/model_switch.py --images 300 --live-rate 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path = [p for p in sys.path if not p.endswith("/bench")]
sys.path.insert(0, str(ROOT))

import asyncpg

from bench.benchdb import scratch_database
from bench.photos import photo_jpegs
from common.bus import Bus
from common.messages import MediaIngested
from common.storage.filesystem import FileSystemStorage
from embedder.app import running
from embedder.settings import EmbedderSettings
from mammoth_export.colour_model import export_colour_model
from mammoth_export.export import TINY_CLIP_ID as TINY
from mammoth_export.export import export_tiny_clip


async def _once(data: bytes) -> Any:
    yield data


class Library:
    """Stored photos as `ingested` content rows of one database, and their events."""

    def __init__(self, database: str, storage: Path) -> None:
        self.database = database
        self.storage = FileSystemStorage(storage, fsync=False)
        self.job = uuid.uuid4()

    async def add(self, conn: asyncpg.Connection, jpegs: list[bytes]) -> list[MediaIngested]:
        if not await conn.fetchval("SELECT EXISTS (SELECT FROM jobs WHERE id = $1)", self.job):
            await conn.execute(
                "INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'bench', 'b')", self.job
            )
        events = []
        for jpeg in jpegs:
            stored = await self.storage.put(_once(jpeg))
            cid = uuid.uuid4()
            await conn.execute(
                """INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key,
                                        first_job_id)
                   VALUES ($1, $2, 'image', 'image/jpeg', $3, $4, $5)""",
                cid,
                stored.sha256,
                stored.size,
                stored.key,
                self.job,
            )
            events.append(
                MediaIngested(
                    content_id=cid,
                    job_id=self.job,
                    sha256=stored.sha256,
                    kind="image",
                    mime_type="image/jpeg",
                    size_bytes=stored.size,
                )
            )
        return events


def settings(
    database: str, storage: Path, models: Path, tag: str, **extra: Any
) -> EmbedderSettings:
    return EmbedderSettings(
        database_url=database,
        storage_path=storage,
        bus_exchange=f"bench-{tag}",
        bus_queue_prefix=f"bench-{tag}.",
        model_dir=models,
        onnx_providers=("cpu",),
        intra_op_threads=2,
        max_batch_size=32,
        max_batch_wait_ms=10,
        decode_workers=2,
        worker_http_host="127.0.0.1",
        worker_http_port=0,
        model_backfill_poll_s=0.2,
        **extra,
    )


async def publish(deps: Any, events: list[MediaIngested]) -> None:
    for event in events:
        await deps.bus.publish(
            event.routing_key, event.to_bytes(), message_id=str(event.message_id)
        )


async def wait_embedded(conn: asyncpg.Connection, events: list[MediaIngested]) -> None:
    ids = [event.content_id for event in events]
    query = "SELECT count(*) FROM content WHERE stage = 'ingested' AND id = ANY($1::uuid[])"
    while await conn.fetchval(query, ids):
        await asyncio.sleep(0.02)


async def live_load(
    deps: Any,
    database: str,
    events: list[MediaIngested],
    rate: float,
    until: asyncio.Event | None = None,
) -> list[float]:
    """Publish one new upload every 1/rate s (until `until` is set); each one's seconds to
    `embedded`."""
    sent: dict[uuid.UUID, float] = {}
    published = []
    for event in events:
        if until is not None and until.is_set():
            break
        sent[event.content_id] = time.time()
        await publish(deps, [event])
        published.append(event)
        await asyncio.sleep(1 / rate)
    conn = await asyncpg.connect(database)  # its own: the caller's is busy meanwhile
    try:
        await wait_embedded(conn, published)
        rows = await conn.fetch(
            "SELECT id, extract(epoch FROM stage_updated_at) AS at FROM content WHERE id = ANY($1)",
            list(sent),
        )
    finally:
        await conn.close()
    return [float(r["at"]) - sent[r["id"]] for r in rows]


async def embedding_rate(conn: asyncpg.Connection, model_id: str, ids: list[uuid.UUID]) -> float:
    """Vectors of the model a second over these content, from the first one saved to the
    last (the database's clock, so start-up and publishing are not counted)."""
    row = await conn.fetchrow(
        """SELECT count(*) AS n, extract(epoch FROM max(created_at) - min(created_at)) AS s
           FROM embeddings WHERE model_id = $1 AND content_id = ANY($2::uuid[])""",
        model_id,
        ids,
    )
    return (int(row["n"]) - 1) / float(row["s"])


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


async def cleanup(config: EmbedderSettings) -> None:
    bus = Bus(config)
    await bus.start(wait=5)
    if bus.connection is not None:
        channel = await bus.connection.channel()
        for spec in bus.specs:
            for queue in (spec.name, spec.parking, *(spec.delay(i) for i in (1, 2, 3))):
                await channel.queue_delete(queue)
        await channel.exchange_delete(config.bus_exchange)
    await bus.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--live-rate", type=float, default=4.0, help="new uploads a second")
    parser.add_argument("--live", type=int, default=60, help="new uploads at most per phase")
    parser.add_argument(
        "--next",
        choices=("tiny", "b32"),
        default="tiny",
        help="the next model: the tiny CLIP (decoding dominates) or a randomly initialised"
        " ViT-B/32 image encoder (inference dominates, as with a real CLIP on a CPU)",
    )
    args = parser.parse_args()
    jpegs = photo_jpegs(args.images + 2 * args.live)
    stored, live_busy, live_idle = (
        jpegs[: args.images],
        jpegs[args.images : args.images + args.live],
        jpegs[args.images + args.live :],
    )
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="mb-switch-") as tmp:
        models = Path(tmp) / "models"
        export_colour_model(models / "colour")
        if args.next == "tiny":
            export_tiny_clip(models / "next", seed=0)
            next_id = TINY
        else:
            from bench.embedder import clip_b32

            next_id = clip_b32(models / "next")[1].model_id

        async with scratch_database("mb_bench_ordinary") as database:
            config = settings(database, Path(tmp) / "a", models, tag + "a", embedding_model="next")
            conn = await asyncpg.connect(database)
            events = await Library(database, Path(tmp) / "a").add(conn, stored)
            try:
                async with running(config) as deps:
                    await deps.bus.wait_connected(10)
                    await publish(deps, events)
                    await wait_embedded(conn, events)
                    ordinary = await embedding_rate(conn, next_id, [e.content_id for e in events])
            finally:
                await conn.close()
                await cleanup(config)

        async with scratch_database("mb_bench_backfill") as database:
            library = Library(database, Path(tmp) / "b")
            config = settings(
                database, Path(tmp) / "b", models, tag + "b", embedding_model="colour"
            )
            conn = await asyncpg.connect(database)
            try:
                events = await library.add(conn, stored)
                async with running(config) as deps:  # the active model's vectors, untimed
                    await deps.bus.wait_connected(10)
                    await publish(deps, events)
                    await wait_embedded(conn, events)
                switching = config.model_copy(update={"embedding_model_next": "next"})
                busy_events = await library.add(conn, live_busy)
                idle_events = await library.add(conn, live_idle)
                async with running(switching) as deps:
                    await deps.bus.wait_connected(10)
                    start = time.perf_counter()
                    missing = "SELECT count(*) FROM content c WHERE c.stage = 'embedded' AND" + (
                        " NOT EXISTS (SELECT FROM embeddings e WHERE e.content_id = c.id"
                        f" AND e.model_id = '{next_id}')"
                    )
                    done = asyncio.Event()
                    load = asyncio.create_task(
                        live_load(deps, database, busy_events, args.live_rate, done)
                    )
                    while await conn.fetchval(missing):
                        await asyncio.sleep(0.05)
                    backfill_s = time.perf_counter() - start
                    done.set()
                    backfill = await embedding_rate(conn, next_id, [e.content_id for e in events])
                    busy = await load
                    idle = await live_load(deps, database, idle_events, args.live_rate)
            finally:
                await conn.close()
                await cleanup(config)
    print(f"next model {next_id}")
    print(f"ordinary (next model alone): {ordinary:.1f} images/s")
    print(
        f"backfill: {backfill:.1f} images/s = {backfill / ordinary:.0%} of ordinary"
        f" ({args.images} stored in {backfill_s:.1f} s, while {len(busy)} new uploads came"
        " and were embedded by both models)"
    )
    print(
        f"new uploads at {args.live_rate}/s: p50 {statistics.median(busy) * 1000:.0f} ms,"
        f" p95 {p95(busy) * 1000:.0f} ms during the backfill; idle p50"
        f" {statistics.median(idle) * 1000:.0f} ms, p95 {p95(idle) * 1000:.0f} ms"
        f" ({p95(busy) / p95(idle):.2f}x)"
    )


if __name__ == "__main__":
    asyncio.run(main())
