"""The embedder's RPC clients (search, the analyzer and the clusterer use them).

An embedder serves one text and one image queue per model it holds: a caller names the model
whose vectors it needs (search: the active one; labels: the cluster's), so no answer is ever
in another model's space, during a model switch or after it.
"""

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


def _reply(raw: bytes, model_id: str) -> EmbedReply:
    try:
        reply = EmbedReply.model_validate_json(raw)
    except ValidationError as error:
        raise EmbedError(f"invalid reply: {error}") from None
    if reply.no_text_encoder:
        raise NoTextEncoder(reply.error or f"{model_id} has no text encoder")
    if reply.error is not None or reply.model_id is None:
        raise EmbedError(reply.error or "reply without a model id")
    if reply.model_id != model_id:
        raise EmbedError(f"asked {model_id}, answered by {reply.model_id}")
    return reply


class ImageEmbedClient:
    """Embeds one image (its encoded bytes) with a model, for search by image."""

    def __init__(self, bus: Bus, *, timeout: float = 10.0) -> None:
        self.bus = bus
        self.timeout = timeout
        self._rpc = RpcClient(bus, "", timeout=timeout)

    async def embed(self, image: bytes, model_id: str) -> NDArray[np.float32]:
        """The image's unit vector, or EmbedError (undecodable image, no answer in time)."""
        queue = image_rpc_queue(self.bus.settings.bus_queue_prefix, model_id)
        try:
            raw = await self._rpc.call(image, queue=queue)
        except RpcTimeout:
            raise EmbedError(f"no image embedding by {model_id} within {self.timeout} s") from None
        reply = _reply(raw, model_id)
        if len(reply.vectors) != 1:
            raise EmbedError("reply without a vector")
        return np.asarray(reply.vectors[0], dtype=np.float32)


class TextEmbedClient:
    def __init__(self, bus: Bus, *, timeout: float = 5.0) -> None:
        self.bus = bus
        self.timeout = timeout
        self._rpc = RpcClient(bus, "", timeout=timeout)

    async def embed(
        self, texts: list[str], model_id: str, *, timeout: float | None = None
    ) -> NDArray[np.float32]:
        """Unit vectors [len(texts), dim] by the model, or EmbedError."""
        body = TextEmbedRequest(texts=texts).model_dump_json().encode()
        queue = text_rpc_queue(self.bus.settings.bus_queue_prefix, model_id)
        try:
            raw = await self._rpc.call(body, timeout=timeout, queue=queue)
        except RpcTimeout:
            waited = self.timeout if timeout is None else timeout
            raise EmbedError(f"no text embedding by {model_id} within {waited} s") from None
        return np.asarray(_reply(raw, model_id).vectors, dtype=np.float32)
