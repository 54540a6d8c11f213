"""The text-embedding RPC server: direct reply-to, no retries, no dead letters.

A request that cannot be answered gets an error reply; one that expired in the queue (its
expiration is the caller's timeout) is dropped by the broker, never answered late.
"""

from __future__ import annotations

import asyncio

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from common.bus import Bus
from common.messages import TextEmbedReply, TextEmbedRequest
from common.topology import text_rpc_queue
from embedder.batching import ModelBatcher
from embedder.model import TextSearchUnavailable

log = structlog.get_logger(__name__)


class TextRpcServer:
    def __init__(self, bus: Bus, batcher: ModelBatcher, model_id: str, prefetch: int = 64) -> None:
        self.bus = bus
        self.batcher = batcher
        self.model_id = model_id
        self.prefetch = prefetch

    async def start(self) -> None:
        channel = await self.bus.channel(prefetch=self.prefetch)
        # Not durable and without a dead-letter exchange: requests are worthless once late.
        queue = await channel.declare_queue(
            text_rpc_queue(self.bus.settings.bus_queue_prefix),
            durable=False,
            arguments={"x-max-length": 10_000, "x-overflow": "reject-publish"},
        )
        await queue.consume(self._on_request)

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False, ignore_processed=True):
            if not message.reply_to:
                return
            reply = await self._answer(message.body)
            await self.bus.reply(
                message.reply_to,
                aio_pika.Message(
                    reply.model_dump_json().encode(),
                    correlation_id=message.correlation_id,
                    content_type="application/json",
                ),
            )

    async def _answer(self, body: bytes) -> TextEmbedReply:
        try:
            request = TextEmbedRequest.model_validate_json(body)
        except ValidationError as error:
            return TextEmbedReply(error=f"invalid request: {error.errors()[0]['msg']}")
        try:
            vectors = await asyncio.gather(*(self.batcher.embed_text(t) for t in request.texts))
        except TextSearchUnavailable as error:
            return TextEmbedReply(error=str(error))
        except Exception as error:
            log.exception("text embedding failed")
            return TextEmbedReply(error=f"text embedding failed: {type(error).__name__}")
        return TextEmbedReply(model_id=self.model_id, vectors=[v.tolist() for v in vectors])
