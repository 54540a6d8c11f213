"""A client for the embedder's text-embedding RPC (search, the analyzer and the clusterer use it).

Requests go to the embedder's RPC queue with RabbitMQ's direct reply-to, a correlation id and
an expiration equal to the caller's timeout: a request nobody served in time disappears
instead of being answered late. They stay outside the retry and dead-letter machinery.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import numpy as np
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from numpy.typing import NDArray

from common.bus import Bus, BusUnavailable
from common.messages import TextEmbedReply, TextEmbedRequest
from common.topology import text_rpc_queue

REPLY_TO = "amq.rabbitmq.reply-to"


class EmbedError(RuntimeError):
    """The embedder answered with an error, or not in time."""


class TextEmbedClient:
    def __init__(self, bus: Bus, *, timeout: float = 5.0) -> None:
        self.bus = bus
        self.timeout = timeout
        self._channel: AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future[TextEmbedReply]] = {}
        self._lock = asyncio.Lock()

    async def _ready_channel(self) -> AbstractChannel:
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                channel = await self.bus.channel()
                # Direct reply-to: consume the pseudo-queue (no ack) before publishing.
                queue = await channel.get_queue(REPLY_TO, ensure=False)
                await queue.consume(self._on_reply, no_ack=True)
                self._channel = channel
            return self._channel

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            try:
                future.set_result(TextEmbedReply.model_validate_json(message.body))
            except ValueError as error:
                future.set_exception(EmbedError(f"invalid reply: {error}"))

    async def embed(
        self, texts: list[str], *, timeout: float | None = None
    ) -> tuple[str, NDArray[np.float32]]:
        """(model id, unit vectors [len(texts), dim]) or EmbedError."""
        if not self.bus.connected:
            raise BusUnavailable("bus not connected")
        timeout = self.timeout if timeout is None else timeout
        channel = await self._ready_channel()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[TextEmbedReply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    TextEmbedRequest(texts=texts).model_dump_json().encode(),
                    correlation_id=correlation_id,
                    reply_to=REPLY_TO,
                    expiration=timeout,
                    content_type="application/json",
                ),
                routing_key=text_rpc_queue(self.bus.settings.bus_queue_prefix),
            )
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise EmbedError(f"no text embedding within {timeout} s") from None
        finally:
            self._pending.pop(correlation_id, None)
        if reply.error is not None or reply.model_id is None:
            raise EmbedError(reply.error or "reply without a model id")
        return reply.model_id, np.asarray(reply.vectors, dtype=np.float32)
