"""One robust AMQP connection per process, publishing with confirms."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pamqp.commands import Basic
from prometheus_client import Counter

from common.aio import wait_event
from common.messages import EVENTS
from common.settings import CommonSettings
from common.topology import (
    ENQUEUED_AT_HEADER,
    PUBLISHED_AT_HEADER,
    QueueSpec,
    declare_all,
    queue_specs,
)

log = structlog.get_logger(__name__)

PUBLISH_REFUSED = Counter(
    "bus_publish_refused_total",
    "Publishes the broker did not take, by destination and reason.",
    ["destination", "reason"],
)

# full: a queue at its length limit nacked it (reject-publish); unroutable: no queue is bound
# to the key (a mandatory publish came back); channel: the channel or connection went away
# while it was in flight; timeout: no confirm in time (e.g. a broker blocked by an alarm).
RefusalReason = Literal["full", "unroutable", "channel", "timeout"]


class BusUnavailable(RuntimeError):
    """The broker cannot be reached right now."""


class PublishRefused(RuntimeError):
    """The broker did not take one message; the bus itself may be fine."""

    def __init__(self, destination: str, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"publish to {destination!r} refused ({reason}): {detail}")
        self.destination = destination
        self.reason = reason


@dataclass
class Refusal:
    """The latest refused publishes to one destination, until one goes through again."""

    reason: RefusalReason
    error: str
    since: float  # wall-clock time of the first refusal of this run
    last: float  # and of the latest
    count: int = 1


def _refusal_reason(error: BaseException) -> RefusalReason:
    if isinstance(error, aiormq.exceptions.PublishError):
        return "unroutable"
    if isinstance(error, aiormq.exceptions.DeliveryError) and isinstance(error.frame, Basic.Nack):
        return "full"
    if isinstance(error, TimeoutError):
        return "timeout"
    return "channel"


class Bus:
    """A robust connection that (re)connects in the background, and a confirming publisher.

    A service starts even while RabbitMQ is down: `connected` tells whether it is usable, and
    publishing raises BusUnavailable until it is.
    """

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        # Every event's refusal series at zero from the start (queues fill in as they refuse).
        for key in EVENTS:
            for reason in get_args(RefusalReason):
                PUBLISH_REFUSED.labels(key, reason)
        self.specs: tuple[QueueSpec, ...] = queue_specs(settings.bus_queue_prefix)
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.refusals: dict[str, Refusal] = {}

    async def start(self, wait: float | None = None) -> None:
        """Begin connecting; optionally wait up to `wait` seconds for the first connection."""
        self._task = asyncio.create_task(self._connect_forever(), name="bus-connect")
        if wait:
            if not await wait_event(self._ready, wait):
                log.warning("bus not reachable yet; continuing to retry")

    async def _connect_forever(self) -> None:
        delay = 0.5
        while True:
            connection = None
            try:
                connection = await aio_pika.connect_robust(
                    self.settings.amqp_url, client_properties={"connection_name": "mammothbox"}
                )
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await declare_all(channel, self.settings, self.specs)
                self._exchange = await channel.get_exchange(self.settings.bus_exchange)
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as error:
                # A declaration refused (PRECONDITION_FAILED: the queue exists with other
                # arguments) is an operator error; it is logged loudly and retried like an outage.
                log.error("bus connect failed", error=str(error) or repr(error), retry_in=delay)
                if connection is not None:
                    await connection.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            break
        self.connection = connection
        self._channel = channel
        self._ready.set()
        log.info("bus connected")

    @property
    def connected(self) -> bool:
        """True while the connection and the publishing channel are open."""
        return (
            self.connection is not None
            and self.connection.connected.is_set()
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def wait_connected(self, timeout: float) -> None:
        """Wait until connected; TimeoutError after `timeout` seconds (inf: for ever)."""
        if not await wait_event(self._ready, timeout):
            raise TimeoutError(f"the bus did not connect within {timeout:g} s")

    async def channel(self, prefetch: int | None = None) -> AbstractChannel:
        """A new channel on the shared connection (consumers get their own)."""
        if self.connection is None:
            raise BusUnavailable("bus not connected")
        channel = await self.connection.channel(publisher_confirms=True)
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
        to_queue: bool = False,
        mandatory: bool = True,
    ) -> None:
        """Publish persistently and wait for the broker's confirm; raise if it is refused.

        With `to_queue` the routing key names a queue and the default exchange is used.
        `mandatory=False` is for notifications that no consumer may be bound to yet.
        """
        if not self.connected or self._channel is None or self._exchange is None:
            raise BusUnavailable("bus not connected")
        now = int(time.time() * 1000)
        # First times only: a retry or a hold re-publishes with the headers it came with.
        stamped = {ENQUEUED_AT_HEADER: now, PUBLISHED_AT_HEADER: now, **(headers or {})}
        message = aio_pika.Message(
            body,
            message_id=message_id,
            headers=stamped,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        exchange = self._channel.default_exchange if to_queue else self._exchange
        try:
            # mandatory: an unroutable event is an error to retry, never a silent drop.
            await exchange.publish(
                message,
                routing_key=routing_key,
                mandatory=mandatory,
                timeout=self.settings.bus_publish_timeout_s,
            )
        except (
            TimeoutError,
            aiormq.exceptions.DeliveryError,
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as error:
            raise self._refused(routing_key, error) from error
        self.refusals.pop(routing_key, None)

    def _refused(self, destination: str, error: BaseException) -> PublishRefused:
        """Record a refused publish (metric, latest state per destination) and describe it."""
        reason = _refusal_reason(error)
        detail = str(error) or type(error).__name__
        PUBLISH_REFUSED.labels(destination, reason).inc()
        now = time.time()
        current = self.refusals.get(destination)
        if current is None:
            self.refusals[destination] = Refusal(reason, detail, now, now)
        else:
            current.reason, current.error, current.last = reason, detail, now
            current.count += 1
        return PublishRefused(destination, reason, detail)

    def refusal_report(self, recent: float = 60.0) -> dict[str, dict[str, Any]]:
        """Destinations whose latest publish, within `recent` seconds, was refused."""
        now = time.time()
        return {
            destination: {
                "reason": r.reason,
                "error": r.error,
                "refused": r.count,
                "since_seconds": round(now - r.since, 1),
            }
            for destination, r in self.refusals.items()
            if now - r.last <= recent
        }

    async def reply(self, reply_to: str, message: aio_pika.Message) -> None:
        """Answer an RPC request (direct reply-to names are routed by the default exchange).

        Not mandatory: RabbitMQ returns a mandatory publish to a direct reply-to name as
        NO_ROUTE even when it delivers it, and when the caller is gone it drops the answer,
        which is all there is to do then."""
        if not self.connected or self._channel is None:
            raise BusUnavailable("bus not connected")
        await self._channel.default_exchange.publish(message, routing_key=reply_to, mandatory=False)

    async def queue_stats(self, name: str) -> tuple[int, int] | None:
        """(messages, consumers) of a queue, or None when it cannot be read."""
        if self.connection is None or not self.connected:
            return None
        try:
            channel = await self.connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
                result = queue.declaration_result
                return int(result.message_count or 0), int(result.consumer_count or 0)
            finally:
                await channel.close()
        except (TimeoutError, aio_pika.exceptions.AMQPError, OSError):
            return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.connection is not None:
            try:
                await asyncio.wait_for(self.connection.close(), 5)
            except TimeoutError:
                log.warning("the bus connection did not close in time")
