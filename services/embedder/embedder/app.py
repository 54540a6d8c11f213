"""The embedder as a worker: model, decoders, batcher, group commit, its queue and two RPCs."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from common import model_switch
from common.messages import MediaIngested
from common.vectors import register_model
from common.worker import Resources, Worker
from embedder import backfill
from embedder.decoder_pool import DecoderPool
from embedder.handlers import EmbedderDeps, LoadedModel, handle_ingested, saver
from embedder.microbatch import ModelBatcher
from embedder.model import OnnxModel
from embedder.rpc import ImageRpcServer, TextRpcServer
from embedder.settings import EmbedderSettings


class ModelNotUsable(RuntimeError):
    """EMBEDDING_MODEL(_NEXT) does not fit the models' state (common/model_switch.py)."""


def _load(settings: EmbedderSettings, path: Path) -> OnnxModel:
    return OnnxModel(
        path,
        providers=settings.onnx_providers,
        threads=settings.intra_op_threads,
        variant=settings.model_variant,
    )


def _batcher(settings: EmbedderSettings, model: OnnxModel, base: Resources) -> ModelBatcher:
    batcher = ModelBatcher(
        model,
        max_batch=settings.max_batch_size,
        max_wait=settings.max_batch_wait_ms / 1000,
        max_background_batch=settings.model_backfill_max_batch,
    )
    batcher.start()
    base.stack.push_async_callback(batcher.close)
    return batcher


async def _check_models(conn: asyncpg.Connection, primary: str, next_model: str | None) -> None:
    """Refuse a model that was retired, or one that is neither active nor in a switch; start
    the switch to EMBEDDING_MODEL_NEXT when none is under way."""
    loaded = [primary] if next_model is None else [primary, next_model]
    retired = await model_switch.retired(conn, loaded)
    if retired:
        raise ModelNotUsable(
            f"model {retired[0]} was retired by a model switch; set EMBEDDING_MODEL to the"
            " active model (GET /api/v1/admin/model-switch names it)"
        )
    if next_model is not None:
        try:
            await model_switch.start(conn, next_model, "embedder (EMBEDDING_MODEL_NEXT)")
        except model_switch.SwitchConflict as error:
            raise ModelNotUsable(f"EMBEDDING_MODEL_NEXT={next_model}: {error}") from None
    active = await model_switch.active_model(conn)
    live = await model_switch.live_switch(conn)
    in_use = {active[0] if active else primary}
    if live is not None:
        in_use |= {live.from_model, live.to_model}
    strays = [m for m in loaded if m not in in_use]
    if strays:
        raise ModelNotUsable(
            f"model {strays[0]} is not the active model ({sorted(in_use)[0]}) nor part of a"
            " switch: set EMBEDDING_MODEL_NEXT to switch to it (a backfill, then a flip)"
        )


async def setup(settings: EmbedderSettings, base: Resources) -> EmbedderDeps:
    """Load the model (and the next one of a switch), start the decoder processes and the
    batchers, register the models."""
    storage = base.storage
    assert storage is not None  # the embedder is a Worker that uses storage
    model = _load(settings, settings.model_path)
    next_path = settings.next_model_path
    following = _load(settings, next_path) if next_path is not None else None
    decoders = DecoderPool(
        model.manifest.preprocess,
        workers=settings.decode_workers,
        memory_limit_bytes=settings.decode_memory_mb * 2**20,
        timeout_s=settings.decode_timeout_s,
        thumbnail_size=settings.thumbnail_size,
        max_pixels=settings.max_image_pixels,
        video_max_frames=settings.video_max_frames,
    )
    base.stack.push_async_callback(decoders.close)
    await decoders.start()  # start-up failures surface here, not on the first image
    batcher = _batcher(settings, model, base)
    next_model = None
    async with base.pool.acquire() as conn:
        await register_model(conn, model.model_id, model.dim, model.manifest.cluster_threshold)
        if following is not None:
            if following.model_id == model.model_id:
                raise ModelNotUsable("EMBEDDING_MODEL_NEXT names the same model as EMBEDDING_MODEL")
            await register_model(
                conn, following.model_id, following.dim, following.manifest.cluster_threshold
            )
            next_model = LoadedModel(
                following.model_id,
                following.dim,
                following.manifest.preprocess,
                _batcher(settings, following, base),
            )
        await _check_models(conn, model.model_id, following.model_id if following else None)
    return base.deps(
        EmbedderDeps,
        settings,
        decoders=decoders,
        batcher=batcher,
        saver=saver(base.pool, storage, settings.near_duplicate_distance, settings.max_batch_size),
        model_id=model.model_id,
        dim=model.dim,
        next=next_model,
    )


async def _start_rpc(deps: EmbedderDeps) -> None:
    # Started before the media consumer: search waits on these, images can wait a little.
    # One pair of queues per model held, so that a caller gets the model it asks for.
    for held in deps.models:
        await TextRpcServer(deps.bus, held.batcher, held.model_id).start()
        await ImageRpcServer(
            deps.bus,
            held.batcher,
            deps.decoders,
            deps.storage.scratch_dir,
            held.model_id,
            held.preprocess,
        ).start()


def _info(deps: EmbedderDeps) -> dict[str, object]:
    model = deps.batcher.model
    following = deps.next
    return {
        "model_id": deps.model_id,
        "embedding_dim": deps.dim,
        "next_model_id": following.model_id if following else None,
        "variant": deps.settings.model_variant,
        "provider": model.provider,
        "text_search": isinstance(model, OnnxModel) and model.text is not None,
        "max_batch_size": deps.settings.max_batch_size,
        "decode_workers": deps.settings.decode_workers,
        "decode_workers_alive": deps.decoders.alive,
    }


worker: Worker[EmbedderSettings, EmbedderDeps] = Worker("embedder", setup)
worker.start_with(_start_rpc)
worker.consume(
    {MediaIngested: handle_ingested},
    # Enough in flight to fill a batch while the previous one runs.
    prefetch=lambda deps: max(deps.settings.max_batch_size * 2, deps.settings.worker_threads),
)
worker.task("model-backfill", backfill.run)
worker.info(_info)
running = worker.running
