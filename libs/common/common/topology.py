"""Bus topology: one topic exchange, a quorum queue per consumer, delay queues, parking queues.

Every process declares the whole topology at start (declarations are idempotent), so an event
is never published before the queue that should hold it exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, ExchangeType

from common.messages import (
    JsonIngested,
    MediaAnalyzed,
    MediaEmbedded,
    MediaIngested,
    MediaRecluster,
    MediaUploaded,
)
from common.settings import CommonSettings

ATTEMPT_HEADER = "x-attempt"
ERROR_HEADER = "x-error"
ORIGIN_QUEUE_HEADER = "x-origin-queue"
ORIGIN_ROUTING_KEY_HEADER = "x-origin-routing-key"


@dataclass(frozen=True)
class QueueSpec:
    """A consumer's queue, the events bound to it, and whether its failures fail the content."""

    service: str
    name: str
    routing_keys: tuple[str, ...]
    fails_content: bool = True

    @property
    def parking(self) -> str:
        return f"{self.name}.dlq"

    def delay(self, tier: int) -> str:
        return f"{self.name}.retry.{tier}"


def queue_specs(prefix: str = "") -> tuple[QueueSpec, ...]:
    """Every consumer queue; BUS_QUEUE_PREFIX lets several deployments share one broker."""
    return (
        QueueSpec("embedder", f"{prefix}embedder.media-ingested", (MediaIngested.routing_key,)),
        QueueSpec("schemer", f"{prefix}schemer.json-ingested", (JsonIngested.routing_key,)),
        QueueSpec(
            "clusterer",
            f"{prefix}clusterer.media-embedded",
            (MediaEmbedded.routing_key, MediaRecluster.routing_key),
        ),
        # A later upload of stored content only needs its link; a failure there is not the
        # content's failure, and neither is a failure to name a cluster.
        QueueSpec(
            "clusterer",
            f"{prefix}clusterer.media-uploaded",
            (MediaUploaded.routing_key,),
            fails_content=False,
        ),
        QueueSpec(
            "clusterer",
            f"{prefix}clusterer.media-analyzed",
            (MediaAnalyzed.routing_key,),
            fails_content=False,
        ),
        QueueSpec(
            "analyzer",
            f"{prefix}analyzer.media-embedded",
            (MediaEmbedded.routing_key,),
            fails_content=False,  # the analysis enriches; its failure does not fail the media
        ),
    )


def text_rpc_queue(prefix: str = "") -> str:
    """The embedder's text-embedding RPC queue (outside the retry and dead-letter machinery)."""
    return f"{prefix}embedder.text-rpc"


def image_rpc_queue(prefix: str = "") -> str:
    """The embedder's image-embedding RPC queue (search by an uploaded image)."""
    return f"{prefix}embedder.image-rpc"


def cluster_command_queue(prefix: str = "") -> str:
    """The clusterer's admin command RPC queue (the gateway waits for each answer)."""
    return f"{prefix}clusterer.commands"


def spec_of(
    specs: tuple[QueueSpec, ...], service: str, routing_key: str | None = None
) -> QueueSpec:
    """The queue of a service (the one bound to `routing_key`, if given)."""
    return next(
        s
        for s in specs
        if s.service == service and (routing_key is None or routing_key in s.routing_keys)
    )


async def declare_queue(
    channel: AbstractChannel, settings: CommonSettings, spec: QueueSpec
) -> aio_pika.abc.AbstractQueue:
    """Declare a consumer queue with its parking queue, delay tiers and bindings."""
    exchange = await channel.declare_exchange(
        settings.bus_exchange, ExchangeType.TOPIC, durable=True
    )
    await channel.declare_queue(spec.parking, durable=True, arguments={"x-queue-type": "quorum"})
    for tier, delay in enumerate(settings.bus_retry_delays, start=1):
        # One TTL per delay queue: per-message TTLs only expire at the head.
        await channel.declare_queue(
            spec.delay(tier),
            durable=True,
            arguments={
                "x-message-ttl": int(delay * 1000),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": spec.name,
            },
        )
    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-max-length": settings.bus_queue_max_length,
            # at-least-once dead-lettering needs reject-publish: a full queue nacks publishers.
            "x-overflow": "reject-publish",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": spec.parking,
            "x-dead-letter-strategy": "at-least-once",
            # A guard against crash loops; ordinary retries go through the delay queues.
            "x-delivery-limit": settings.bus_delivery_limit,
        },
    )
    for key in spec.routing_keys:
        await queue.bind(exchange, routing_key=key)
    return queue


async def declare_all(
    channel: AbstractChannel, settings: CommonSettings, specs: tuple[QueueSpec, ...]
) -> None:
    """Declare the exchange and every consumer queue."""
    for spec in specs:
        await declare_queue(channel, settings, spec)
