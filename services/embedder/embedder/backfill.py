"""A model switch's backfill: every stored media content embedded by EMBEDDING_MODEL_NEXT.

One embedder at a time runs it (a session advisory lock; the others stand by to take over).
It walks the content missing the next model's vector in id order, a page of
MODEL_BACKFILL_BATCH at a time with a few items in flight, and for each: decodes the stored
file with the next model's preprocessing (in the same bounded decoder pool), embeds it at
the batcher's lowest priority, saves the vector (and a video's frames) beside the active
model's, and tells the clusterer (media.standby-embedded) so that the next model's clusters
grow alongside.

It gives way to new uploads: a page starts only when no new upload is being embedded, its
images go to the batcher's lowest priority in small inferences (MODEL_BACKFILL_MAX_BATCH:
a new upload's image waits at most for the one running), and MODEL_BACKFILL_RATE caps it
further.
It stops while the switch is paused, and finishes when nothing is missing; a content that
cannot be decoded any more is counted and skipped (it would block the flip: see /health).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Literal

import asyncpg
import structlog
from prometheus_client import Counter, Gauge

from common import model_switch
from common.consumer import Permanent
from embedder import repo
from embedder.decode import DecodeError
from embedder.handlers import EmbedderDeps, LoadedModel, publish_embedded, vectors_of

log = structlog.get_logger(__name__)

BACKFILLED = Counter(
    "model_backfill_items_total",
    "Stored content embedded by the next model of a switch, by outcome.",
    ["model", "outcome"],
)
PENDING = Gauge(
    "model_backfill_pending",
    "Stored media content the next model of a switch has not embedded yet.",
    ["model"],
)
SKIPPED_MAX = 10_000
PAUSE_CHECK_S = 0.25  # within a page, how often the switch's state is looked at again


async def run(deps: EmbedderDeps) -> None:
    """The embedder's background task: backfill while a switch to its next model is on."""
    target = deps.next
    if target is None:
        return
    for outcome in ("embedded", "failed", "gone", "error"):
        BACKFILLED.labels(target.model_id, outcome)
    skipped: set[uuid.UUID] = set()
    poll = deps.settings.model_backfill_poll_s
    while True:
        try:
            async with deps.pool.acquire() as conn:
                if await repo.try_backfill_lock(conn):
                    try:
                        await _backfill(deps, conn, target, skipped)
                    finally:
                        await repo.backfill_unlock(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("backfill interrupted", error=str(error))
        await asyncio.sleep(poll)


async def _backfilling(conn: asyncpg.Connection, model_id: str) -> bool:
    switch = await model_switch.live_switch(conn)
    return switch is not None and switch.to_model == model_id and switch.status != "paused"


async def _backfill(
    deps: EmbedderDeps, conn: asyncpg.Connection, target: LoadedModel, skipped: set[uuid.UUID]
) -> None:
    """Until nothing is missing, or the switch is paused or over: pages of missing content,
    each started when no new upload is being embedded, its items each when a slot is free
    (one per decoder, and one more so the model is never left waiting for a decode)."""
    after: uuid.UUID | None = None
    slots = asyncio.Semaphore(deps.settings.decode_workers + 1)
    decoding = asyncio.Semaphore(deps.settings.decode_workers)
    pace = Pace(deps.settings.model_backfill_rate)
    running: set[asyncio.Task[None]] = set()
    try:
        while await _backfilling(conn, target.model_id):
            rows = await repo.missing(
                conn, target.model_id, after, deps.settings.model_backfill_batch, list(skipped)
            )
            if not rows:
                await asyncio.gather(*running)  # what is in flight is not missing any more
                PENDING.labels(target.model_id).set(
                    await repo.missing_count(conn, target.model_id, list(skipped))
                )
                if after is None:
                    return  # nothing missing: look again after the poll interval
                after = None  # once more from the start: content embedded meanwhile by others
                continue
            after = rows[-1].id
            while not await deps.live.idle(1.0):
                pass  # a page starts when no new upload is being embedded
            checked = time.monotonic()
            for row in rows:
                await slots.acquire()
                await pace.wait()
                if time.monotonic() - checked > PAUSE_CHECK_S:
                    if not await _backfilling(conn, target.model_id):
                        slots.release()
                        break  # paused (or over) meanwhile: the outer loop sees it
                    checked = time.monotonic()
                task = asyncio.create_task(_item(deps, target, row, decoding, slots, skipped))
                running.add(task)
                task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


class Pace:
    """At most `rate` starts a second (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        await asyncio.sleep(max(0.0, self._next - now))
        self._next = max(now, self._next) + self.interval


async def _item(
    deps: EmbedderDeps,
    target: LoadedModel,
    row: repo.Missing,
    decoding: asyncio.Semaphore,
    slots: asyncio.Semaphore,
    skipped: set[uuid.UUID],
) -> None:
    try:
        outcome = await _one(deps, target, row, decoding)
    except Permanent as error:  # decoded, but nothing to embed (a video without frames)
        log.warning("backfill cannot embed", content_id=str(row.id), error=str(error))
        outcome = "failed"
    except Exception as error:  # a database or bus hiccup: the next pass tries again
        log.warning("backfill item failed", content_id=str(row.id), error=str(error))
        outcome = "error"
    finally:
        slots.release()
    BACKFILLED.labels(target.model_id, outcome).inc()
    if outcome == "failed" and len(skipped) < SKIPPED_MAX:
        skipped.add(row.id)


async def _one(
    deps: EmbedderDeps, target: LoadedModel, row: repo.Missing, decoding: asyncio.Semaphore
) -> str:
    """Embed one stored content by the next model: 'embedded', 'failed' or 'gone'."""
    kind: Literal["image", "video"] = "video" if row.kind == "video" else "image"
    try:
        async with decoding, deps.storage.local_file(row.storage_key) as local:
            decoded = await deps.decoders.decode(str(local), kind, target.preprocess)
        vectors = await vectors_of(target, decoded, background=True)
    except (DecodeError, FileNotFoundError) as error:
        if await repo.content(deps.pool, row.id) is None:
            return "gone"  # deleted meanwhile, with its file
        log.warning("backfill cannot decode", content_id=str(row.id), error=str(error))
        return "failed"
    async with deps.pool.acquire() as conn:
        saved = await repo.save_backfilled(conn, row.id, vectors)
    if saved is None:
        return "gone"
    await publish_embedded(
        deps,
        content_id=row.id,
        job_id=saved.job_id,
        kind=kind,
        models=[target.model_id],
        standby=saved.standby_model,
        near=saved.near_duplicate_of,
    )
    return "embedded"
