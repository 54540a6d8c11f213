"""The embedder as a worker: model, decoders, batcher, group commit, its queue and two RPCs."""

from __future__ import annotations

from common.messages import MediaIngested
from common.vectors import register_model
from common.worker import Resources, Worker
from embedder.decoder_pool import DecoderPool
from embedder.handlers import EmbedderDeps, handle_ingested, saver
from embedder.microbatch import ModelBatcher
from embedder.model import OnnxModel
from embedder.rpc import ImageRpcServer, TextRpcServer
from embedder.settings import EmbedderSettings


async def setup(settings: EmbedderSettings, base: Resources) -> EmbedderDeps:
    """Load the model, start the decoder processes and the batcher, register the model."""
    model = OnnxModel(
        settings.model_path,
        providers=settings.onnx_providers,
        threads=settings.intra_op_threads,
        variant=settings.model_variant,
    )
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
    batcher = ModelBatcher(
        model, max_batch=settings.max_batch_size, max_wait=settings.max_batch_wait_ms / 1000
    )
    batcher.start()
    base.stack.push_async_callback(batcher.close)
    async with base.pool.acquire() as conn:
        await register_model(conn, model.model_id, model.dim, model.manifest.cluster_threshold)
    return base.deps(
        EmbedderDeps,
        settings,
        decoders=decoders,
        batcher=batcher,
        saver=saver(
            base.pool, base.storage, settings.near_duplicate_distance, settings.max_batch_size
        ),
        model_id=model.model_id,
        dim=model.dim,
    )


async def _start_rpc(deps: EmbedderDeps) -> None:
    # Started before the media consumer: search waits on these, images can wait a little.
    await TextRpcServer(deps.bus, deps.batcher, deps.model_id).start()
    await ImageRpcServer(
        deps.bus, deps.batcher, deps.decoders, deps.storage.root / "tmp", deps.model_id
    ).start()


def _info(deps: EmbedderDeps) -> dict[str, object]:
    model = deps.batcher.model
    return {
        "model_id": deps.model_id,
        "embedding_dim": deps.dim,
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
worker.info(_info)
running = worker.running
