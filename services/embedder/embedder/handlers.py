"""media.ingested -> decode once -> embed (micro-batched) -> write by CAS -> media.embedded.

During a model switch the next model embeds each new upload too (from a second decode only
when its preprocessing differs), and its vectors are told as media.standby-embedded.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import asyncpg
import numpy as np
import structlog

from common import tombstones
from common.aio import InFlight
from common.consumer import Delivery, Permanent
from common.db import timed
from common.group_commit import GroupCommit
from common.messages import MediaEmbedded, MediaIngested, StandbyEmbedded
from common.objects import remove_unreferenced
from common.stages import Stage
from common.storage import Storage, chunks_of
from common.worker import WorkerDeps
from embedder import repo
from embedder.decode import Decoded, DecodedVideo, DecodeError
from embedder.decoder_pool import DecoderPool
from embedder.manifest import Preprocess
from embedder.microbatch import ModelBatcher
from embedder.settings import EmbedderSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model this embedder holds, with its batcher and preprocessing."""

    model_id: str
    dim: int
    preprocess: Preprocess
    batcher: ModelBatcher


@dataclass(frozen=True, kw_only=True)
class EmbedderDeps(WorkerDeps):
    settings: EmbedderSettings
    storage: Storage
    decoders: DecoderPool
    batcher: ModelBatcher
    saver: Saver
    model_id: str
    dim: int
    # EMBEDDING_MODEL_NEXT, while a switch to it goes on (embedder/backfill.py).
    next: LoadedModel | None = None
    # New uploads being embedded: the backfill gives way to them.
    live: InFlight = field(default_factory=InFlight)

    @property
    def primary(self) -> LoadedModel:
        return LoadedModel(self.model_id, self.dim, self.decoders.preprocess, self.batcher)

    @property
    def models(self) -> tuple[LoadedModel, ...]:
        return (self.primary,) if self.next is None else (self.primary, self.next)


Saver = GroupCommit[repo.Embedded, repo.Saved]


def saver(pool: asyncpg.Pool, storage: Storage, max_distance: int, max_batch: int) -> Saver:
    """Saves of images embedded together share one transaction under the pHash lock.

    One group at a time per process: the lock serialises them across replicas anyway.
    """

    async def keep_one(result: repo.Embedded) -> None:
        if await storage.stat(result.thumbnail_key) is None:
            await storage.put(chunks_of(result.thumbnail))

    async def keep_thumbnails(saved: list[repo.Embedded]) -> None:
        # Together: held under the pHash lock, and with S3 each check is a request.
        await asyncio.gather(*(keep_one(result) for result in saved))

    async def write(batch: Sequence[repo.Embedded]) -> list[repo.Saved]:
        async with timed("embedder_save"), pool.acquire() as conn:
            return await repo.save_many(conn, batch, max_distance, keep_thumbnails)

    return GroupCommit(write, name="save", max_batch=max_batch, max_in_flight=1)


def _mean_direction(vectors: list[np.ndarray]) -> np.ndarray:
    mean = np.mean(np.stack(vectors), axis=0)
    norm = float(np.linalg.norm(mean))
    result: np.ndarray = (mean / norm if norm > 0 else mean).astype(np.float32)
    return result


async def publish_embedded(
    deps: WorkerDeps,
    *,
    content_id: uuid.UUID,
    job_id: uuid.UUID,
    kind: Literal["image", "video"],
    models: Sequence[str],
    standby: str | None,
    near: uuid.UUID | None,
) -> None:
    """Tell each model's vectors: the standby model's to its own queue, others as before."""
    for model_id in models:
        event_type = StandbyEmbedded if model_id == standby else MediaEmbedded
        out = event_type(
            content_id=content_id,
            job_id=job_id,
            kind=kind,
            model_id=model_id,
            near_duplicate_of=near,
        )
        await deps.bus.publish(out.routing_key, out.to_bytes(), message_id=str(out.message_id))


async def handle_ingested(deps: EmbedderDeps, event: MediaIngested, delivery: Delivery) -> None:
    """Embed one piece of content; redelivery and duplicates are harmless."""
    with deps.live:
        await _handle_ingested(deps, event)


async def _handle_ingested(deps: EmbedderDeps, event: MediaIngested) -> None:
    row = await repo.content(deps.pool, event.content_id)
    if row is None:
        await tombstones.missing(deps.pool, event.content_id)
        return
    tell = functools.partial(
        publish_embedded,
        deps,
        content_id=event.content_id,
        job_id=event.job_id,
        kind=event.kind,
    )
    if row.stage in (Stage.EMBEDDED, Stage.CLUSTERED):
        # Done before (a crash between commit and publish, or a redelivery): publish again.
        models, standby = await repo.embedded_models(deps.pool, event.content_id)
        await tell(models=models, standby=standby, near=row.near_duplicate_of)
        return
    if row.stage != Stage.INGESTED or row.storage_key is None:
        return  # failed already, or not media: nothing to do
    try:
        # A temporary local file from the port (a hard link on a filesystem, a download
        # with S3; gone when the block ends): the decoders never see where the store is.
        async with deps.storage.local_file(row.storage_key) as local:
            decoded = await deps.decoders.decode(str(local), event.kind)
            result = await _embed(deps, event.content_id, str(local), decoded)
    except (DecodeError, FileNotFoundError) as error:
        if await repo.content(deps.pool, event.content_id) is None:
            # Deleted meanwhile: its file went with it.
            await tombstones.missing(deps.pool, event.content_id)
            return
        reason = "the stored file is missing" if isinstance(error, FileNotFoundError) else error
        await repo.fail(deps.pool, event.content_id, f"cannot decode {event.kind}: {reason}")
        raise Permanent(f"cannot decode {event.kind}: {reason}") from None
    saved = await deps.saver.submit(result)
    near = saved.near_duplicate_of
    models, standby = list(saved.models), saved.standby_model
    if not saved.advanced:
        # A concurrent delivery finished first (publish what it recorded), or the content
        # was deleted meanwhile (nothing to tell).
        current = await repo.content(deps.pool, event.content_id)
        if current is None:
            async with deps.pool.acquire() as conn:  # the thumbnail stored for it goes too
                await remove_unreferenced(conn, deps.storage, [result.thumbnail_key])
            await tombstones.missing(deps.pool, event.content_id)
            return
        near = current.near_duplicate_of
        models, standby = await repo.embedded_models(deps.pool, event.content_id)
    await tell(models=models, standby=standby, near=near)


async def vectors_of(
    model: LoadedModel, decoded: Decoded | DecodedVideo, *, background: bool = False
) -> repo.Vectors:
    """The model's vectors of decoded media (decoded with its preprocessing): an image's
    embedding, or each video frame's and their mean direction."""
    embed = model.batcher.embed_background if background else model.batcher.embed_image
    if isinstance(decoded, DecodedVideo):
        vectors = list(await asyncio.gather(*(embed(p) for _, p in decoded.frames)))
        if not vectors:
            raise Permanent("the video has no decodable frames")
        frames = tuple((ts, vec) for (ts, _), vec in zip(decoded.frames, vectors, strict=True))
        return repo.Vectors(model.model_id, _mean_direction(vectors), frames)
    return repo.Vectors(model.model_id, await embed(decoded.pixels))


async def _embed(
    deps: EmbedderDeps, content_id: uuid.UUID, path: str, decoded: Decoded | DecodedVideo
) -> repo.Embedded:
    thumbnail = await deps.storage.put(chunks_of(decoded.thumbnail))
    kind: Literal["image", "video"] = "video" if isinstance(decoded, DecodedVideo) else "image"
    vectors = [await vectors_of(deps.primary, decoded)]
    if deps.next is not None:
        same = deps.next.preprocess == deps.decoders.preprocess
        again = decoded if same else await deps.decoders.decode(path, kind, deps.next.preprocess)
        vectors.append(await vectors_of(deps.next, again))
    duration = None
    exif: dict[str, object] = {}
    if isinstance(decoded, DecodedVideo):
        duration = decoded.duration
    else:
        exif = dict(decoded.exif)
    return repo.Embedded(
        content_id=content_id,
        vectors=tuple(vectors),
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        exif=exif,
        phash=decoded.phash,
        thumbnail_key=thumbnail.key,
        thumbnail=decoded.thumbnail,
        duration_s=duration,
    )
