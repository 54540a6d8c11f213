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
    JsonIngestedV1,
    MediaAnalyzed,
    MediaEmbedded,
    MediaIngested,
    MediaRecluster,
    MediaUploaded,
    SchemaCommand,
    StandbyEmbedded,
    UploadsDeleted,
)
from common.settings import CommonSettings

ATTEMPT_HEADER = "x-attempt"
ERROR_HEADER = "x-error"
# The traceback of an unexpected failure, kept with its dead letter (bounded).
TRACEBACK_HEADER = "x-traceback"
ORIGIN_QUEUE_HEADER = "x-origin-queue"
ORIGIN_ROUTING_KEY_HEADER = "x-origin-routing-key"
# When the event was recorded for publishing (its outbox row, or the publish itself) and when
# the broker first took it, as integer epoch milliseconds (pamqp sends a Python float as a 32-bit
# float, about two minutes coarse): kept across retries, read by the stage log.
ENQUEUED_AT_HEADER = "x-enqueued-at"
PUBLISHED_AT_HEADER = "x-published-at"


@dataclass(frozen=True)
class QueueSpec:
    """A consumer's queue, the events bound to it, the stage it is (in metrics and the
    timeline), and whether its failures fail the content."""

    service: str
    name: str
    routing_keys: tuple[str, ...]
    stage: str
    fails_content: bool = True

    @property
    def parking(self) -> str:
        return f"{self.name}.dlq"

    def delay(self, tier: int) -> str:
        return f"{self.name}.delay.{tier}"

    def legacy_delay(self, tier: int) -> str:
        """The classic delay queue of earlier releases, drained and removed on upgrade."""
        return f"{self.name}.retry.{tier}"


def queue_specs(prefix: str = "") -> tuple[QueueSpec, ...]:
    """Every consumer queue; BUS_QUEUE_PREFIX lets several deployments share one broker."""
    return (
        QueueSpec(
            "embedder", f"{prefix}embedder.media-ingested", (MediaIngested.routing_key,), "embed"
        ),
        # A JSON event stands for uploads, not one content: the schemer's failures are shown
        # per upload (through its dead letter), never by failing shared content.
        QueueSpec(
            "schemer",
            f"{prefix}schemer.json-ingested",
            (JsonIngested.routing_key, JsonIngestedV1.routing_key),
            "store",
            fails_content=False,
        ),
        QueueSpec(
            "clusterer",
            f"{prefix}clusterer.media-embedded",
            (MediaEmbedded.routing_key, MediaRecluster.routing_key),
            "cluster",
        ),
        # A model switch's standby clusters, built beside the active ones (clusterer/standby.py):
        # a failure there fails nothing the user sees.
        QueueSpec(
            "clusterer",
            f"{prefix}clusterer.media-standby",
            (StandbyEmbedded.routing_key,),
            "standby",
            fails_content=False,
        ),
        # A later upload of stored content only needs its link; a failure there is not the
        # content's failure, and neither is a failure to name a cluster.
        QueueSpec(
            "clusterer",
            f"{prefix}clusterer.media-uploaded",
            (MediaUploaded.routing_key,),
            "link",
            fails_content=False,
        ),
        QueueSpec(
            "clusterer",
            f"{prefix}clusterer.media-analyzed",
            (MediaAnalyzed.routing_key,),
            "name",
            fails_content=False,
        ),
        QueueSpec(
            "analyzer",
            f"{prefix}analyzer.media-embedded",
            (MediaEmbedded.routing_key,),
            "analyze",
            fails_content=False,  # the analysis enriches; its failure does not fail the media
        ),
        # Deleted uploads: media content no upload refers to any more is purged, folders
        # brought in line (clusterer); documents leave their collections (schemer). Each queue
        # is its own stage: one event is handled by both.
        QueueSpec(
            "clusterer",
            f"{prefix}clusterer.uploads-deleted",
            (UploadsDeleted.routing_key,),
            "purge_media",
            fails_content=False,
        ),
        QueueSpec(
            "schemer",
            f"{prefix}schemer.uploads-deleted",
            (UploadsDeleted.routing_key,),
            "purge_documents",
            fails_content=False,
        ),
        # Approvals and rejections of collections (the gateway writes them to its outbox).
        QueueSpec(
            "schemer",
            f"{prefix}schemer.commands",
            (SchemaCommand.routing_key,),
            "schema_command",
            fails_content=False,
        ),
    )


def text_rpc_queue(prefix: str, model_id: str) -> str:
    """The embedder's text-embedding RPC queue for one model (outside the retry and
    dead-letter machinery): an embedder serves one per model it holds, so a caller always
    gets vectors of the model it asks for, across a model switch."""
    return f"{prefix}embedder.text-rpc.{model_id}"


def image_rpc_queue(prefix: str, model_id: str) -> str:
    """The embedder's image-embedding RPC queue for one model (search by an uploaded image)."""
    return f"{prefix}embedder.image-rpc.{model_id}"


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
        # One TTL per delay queue: per-message TTLs only expire at the head. Quorum, so that
        # a retry whose origin queue is full waits in the delay queue (at-least-once
        # dead-lettering) instead of being dropped, as a classic queue would drop it.
        await channel.declare_queue(
            spec.delay(tier),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": int(delay * 1000),
                "x-max-length": settings.bus_queue_max_length,
                "x-overflow": "reject-publish",
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": spec.name,
                "x-dead-letter-strategy": "at-least-once",
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


LEGACY_DELAY_TIERS = 10  # earlier releases declared one classic delay queue per retry tier


async def migrate_legacy_delay_queues(
    connection: aio_pika.abc.AbstractConnection, specs: tuple[QueueSpec, ...]
) -> int:
    """Drain the classic delay queues of earlier releases into their origin queues, then
    delete them; returns how many messages moved. Idempotent and safe from many processes.

    Redeclaring a queue with other arguments fails (PRECONDITION_FAILED), so the quorum delay
    queues have new names; what waits in an old one goes back to its origin now (an early
    retry is harmless: consumers are idempotent) rather than being lost with the queue.
    """
    moved = 0
    publisher = await connection.channel(publisher_confirms=True)
    try:
        for spec in specs:
            for tier in range(1, LEGACY_DELAY_TIERS + 1):
                moved += await _drain_legacy(connection, publisher, spec, spec.legacy_delay(tier))
    finally:
        await publisher.close()
    return moved


async def _drain_legacy(
    connection: aio_pika.abc.AbstractConnection,
    publisher: AbstractChannel,
    spec: QueueSpec,
    name: str,
) -> int:
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return 0  # never existed, or already migrated (the failed declare closed the channel)
    moved = 0
    try:
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            await publisher.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=dict(message.headers or {}),
                    message_id=message.message_id,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=spec.name,
                mandatory=True,
            )
            await message.ack()  # only once the origin queue confirmed its copy
            moved += 1
        try:
            await queue.delete(if_unused=False, if_empty=True)
        except aio_pika.exceptions.ChannelPreconditionFailed:
            pass  # an old process put a retry in meanwhile: the next run takes it
    finally:
        if not channel.is_closed:
            await channel.close()
    return moved
