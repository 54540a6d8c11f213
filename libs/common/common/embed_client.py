"""The embedder's text-embedding RPC client (search, the analyzer and the clusterer use it)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from common.bus import Bus
from common.messages import EmbedReply, TextEmbedRequest
from common.rpc import RpcClient, RpcTimeout
from common.topology import image_rpc_queue, text_rpc_queue


class EmbedError(RuntimeError):
    """The embedder answered with an error, or not in time."""


class NoTextEncoder(EmbedError):
    """The embedder's model has no text encoder: text cannot be embedded at all."""


class ImageEmbedClient:
    """Embeds one image (its encoded bytes) with the embedder's model, for search by image."""

    def __init__(self, bus: Bus, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._rpc = RpcClient(bus, image_rpc_queue(bus.settings.bus_queue_prefix), timeout=timeout)

    async def embed(self, image: bytes) -> tuple[str, NDArray[np.float32]]:
        """(model id, unit vector) or EmbedError (undecodable image, no answer in time)."""
        try:
            raw = await self._rpc.call(image)
        except RpcTimeout:
            raise EmbedError(f"no image embedding within {self.timeout} s") from None
        try:
            reply = EmbedReply.model_validate_json(raw)
        except ValidationError as error:
            raise EmbedError(f"invalid reply: {error}") from None
        if reply.error is not None or reply.model_id is None or len(reply.vectors) != 1:
            raise EmbedError(reply.error or "reply without a vector")
        return reply.model_id, np.asarray(reply.vectors[0], dtype=np.float32)


class TextEmbedClient:
    def __init__(self, bus: Bus, *, timeout: float = 5.0) -> None:
        self.bus = bus
        self.timeout = timeout
        self._rpc = RpcClient(bus, text_rpc_queue(bus.settings.bus_queue_prefix), timeout=timeout)

    async def embed(
        self, texts: list[str], *, timeout: float | None = None
    ) -> tuple[str, NDArray[np.float32]]:
        """(model id, unit vectors [len(texts), dim]) or EmbedError."""
        body = TextEmbedRequest(texts=texts).model_dump_json().encode()
        try:
            raw = await self._rpc.call(body, timeout=timeout)
        except RpcTimeout:
            raise EmbedError(
                f"no text embedding within {self.timeout if timeout is None else timeout} s"
            ) from None
        try:
            reply = EmbedReply.model_validate_json(raw)
        except ValidationError as error:
            raise EmbedError(f"invalid reply: {error}") from None
        if reply.no_text_encoder:
            raise NoTextEncoder(reply.error or f"{reply.model_id} has no text encoder")
        if reply.error is not None or reply.model_id is None:
            raise EmbedError(reply.error or "reply without a model id")
        return reply.model_id, np.asarray(reply.vectors, dtype=np.float32)
