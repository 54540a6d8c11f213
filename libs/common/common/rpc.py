"""Request/reply over RabbitMQ: direct reply-to, correlation ids, expiration = the timeout.

A request nobody served in time disappears from the queue instead of being answered late.
RPC stays outside the retry and dead-letter machinery: the caller owns the retry decision.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from common.aio import InFlight
from common.bus import Bus, BusUnavailable

log = structlog.get_logger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
RPC_QUEUE_ARGUMENTS: dict[str, Any] = {"x-max-length": 10_000, "x-overflow": "reject-publish"}


class RpcTimeout(TimeoutError):
    """Nobody answered within the timeout."""


class RpcClient:
    """Calls an RPC queue (`queue`, or the one a call names); many calls may be in flight on
    one channel."""

    def __init__(self, bus: Bus, queue: str, *, timeout: float) -> None:
        self.bus = bus
        self.queue = queue
        self.timeout = timeout
        self._channel: AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}
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
            future.set_result(message.body)

    async def call(
        self, body: bytes, *, timeout: float | None = None, queue: str | None = None
    ) -> bytes:
        """The reply's body, or RpcTimeout / BusUnavailable."""
        queue = self.queue if queue is None else queue
        if not self.bus.connected:
            raise BusUnavailable("bus not connected")
        timeout = self.timeout if timeout is None else timeout
        channel = await self._ready_channel()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    correlation_id=correlation_id,
                    reply_to=REPLY_TO,
                    expiration=timeout,
                    content_type="application/json",
                ),
                routing_key=queue,
            )
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RpcTimeout(f"no answer from {queue} within {timeout} s") from None
        finally:
            self._pending.pop(correlation_id, None)


Answer = Callable[[bytes], Awaitable[bytes]]


class RpcServer:
    """Serves one RPC queue: each request's body goes to `answer`, whose bytes are the reply.

    The queue is not durable, goes with its last consumer and has no dead-letter exchange:
    requests are worthless once late.
    `answer` must turn its own failures into error replies.
    """

    def __init__(self, bus: Bus, queue: str, answer: Answer, *, prefetch: int) -> None:
        self.bus = bus
        self.queue = queue
        self.answer = answer
        self.prefetch = prefetch
        self.in_flight = InFlight()
        self._consumer: tuple[AbstractQueue, str] | None = None

    async def start(self) -> None:
        channel = await self.bus.channel(prefetch=self.prefetch)
        queue = await channel.declare_queue(
            self.queue,
            durable=False,
            # Gone with its last server: the queues of a model no embedder holds any more
            # (after a model switch) do not linger.
            auto_delete=True,
            arguments=RPC_QUEUE_ARGUMENTS,
        )
        self._consumer = (queue, await queue.consume(self._on_request))

    async def stop(self) -> None:
        """Take no more requests (those in flight are still answered)."""
        if self._consumer is not None:
            queue, tag = self._consumer
            self._consumer = None
            try:
                await queue.cancel(tag)
            except Exception as error:  # the channel is gone: nothing is delivered anyway
                log.info("rpc consumer cancel failed", queue=self.queue, error=str(error))

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        with self.in_flight:
            await self._answer(message)

    async def _answer(self, message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False, ignore_processed=True):
            if not message.reply_to:
                return
            body = await self.answer(message.body)
            try:
                await self.bus.reply(
                    message.reply_to,
                    aio_pika.Message(
                        body, correlation_id=message.correlation_id, content_type="application/json"
                    ),
                )
            except aio_pika.exceptions.PublishError as error:
                # The broker refused the answer (a caller that is gone is not one: the broker
                # drops its answer quietly).
                log.warning("rpc answer not published", queue=self.queue, error=str(error))
