"""The text-embedding RPC: direct reply-to, no retries, no dead letters.

A request that cannot be answered gets an error reply; one that expired in the queue (its
expiration is the caller's timeout) is dropped by the broker, never answered late.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import structlog
from pydantic import ValidationError

from common.bus import Bus
from common.messages import EmbedReply, TextEmbedRequest
from common.rpc import RpcServer
from common.topology import image_rpc_queue, text_rpc_queue
from embedder.decode import DecodeError
from embedder.decoder_pool import DecoderPool
from embedder.manifest import Preprocess
from embedder.microbatch import ModelBatcher
from embedder.model import TextSearchUnavailable

log = structlog.get_logger(__name__)


class TextRpcServer:
    def __init__(self, bus: Bus, batcher: ModelBatcher, model_id: str, prefetch: int = 64) -> None:
        self.batcher = batcher
        self.model_id = model_id
        self._server = RpcServer(
            bus,
            text_rpc_queue(bus.settings.bus_queue_prefix, model_id),
            self._answer,
            prefetch=prefetch,
        )

    async def start(self) -> None:
        await self._server.start()

    async def _answer(self, body: bytes) -> bytes:
        return (await self._reply(body)).model_dump_json().encode()

    async def _reply(self, body: bytes) -> EmbedReply:
        try:
            request = TextEmbedRequest.model_validate_json(body)
        except ValidationError as error:
            return EmbedReply(error=f"invalid request: {error.errors()[0]['msg']}")
        try:
            vectors = await asyncio.gather(*(self.batcher.embed_text(t) for t in request.texts))
        except TextSearchUnavailable as error:
            return EmbedReply(model_id=self.model_id, error=str(error), no_text_encoder=True)
        except Exception as error:
            log.exception("text embedding failed")
            return EmbedReply(error=f"text embedding failed: {type(error).__name__}")
        return EmbedReply(model_id=self.model_id, vectors=[v.tolist() for v in vectors])


MAX_IMAGE_BYTES = 32 * 1024 * 1024


class ImageRpcServer:
    """Embeds an image sent as bytes (search by an uploaded image): decoded in the same
    bounded worker pool as stored media, so a hostile image fails only its own request."""

    def __init__(
        self,
        bus: Bus,
        batcher: ModelBatcher,
        decoders: DecoderPool,
        scratch: Path,
        model_id: str,
        preprocess: Preprocess | None = None,
        prefetch: int = 8,
    ) -> None:
        self.batcher = batcher
        self.decoders = decoders
        self.scratch = scratch
        self.model_id = model_id
        self.preprocess = preprocess  # the model's, when it is not the decoder pool's
        self._server = RpcServer(
            bus,
            image_rpc_queue(bus.settings.bus_queue_prefix, model_id),
            self._answer,
            prefetch=prefetch,
        )

    async def start(self) -> None:
        await self._server.start()

    async def _answer(self, body: bytes) -> bytes:
        return (await self._reply(body)).model_dump_json().encode()

    async def _reply(self, body: bytes) -> EmbedReply:
        if not body or len(body) > MAX_IMAGE_BYTES:
            return EmbedReply(error=f"the image must be 1 byte to {MAX_IMAGE_BYTES} bytes")
        path = self.scratch / f"search-{uuid.uuid4().hex}.part"
        try:
            await asyncio.to_thread(path.write_bytes, body)
            decoded = await self.decoders.decode(str(path), "image", self.preprocess)
            vector = await self.batcher.embed_image(decoded.pixels)
        except DecodeError as error:
            return EmbedReply(error=f"cannot decode the image: {error}")
        except Exception as error:
            log.exception("image embedding failed")
            return EmbedReply(error=f"image embedding failed: {type(error).__name__}")
        finally:
            path.unlink(missing_ok=True)
        return EmbedReply(model_id=self.model_id, vectors=[vector.tolist()])
