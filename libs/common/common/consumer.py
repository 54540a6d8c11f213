"""One ack policy, in one wrapper: ack on success, retry through delay queues, or park."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from common.bus import Bus, BusUnavailable, PublishRefused
from common.messages import Event
from common.topology import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    ORIGIN_QUEUE_HEADER,
    ORIGIN_ROUTING_KEY_HEADER,
    QueueSpec,
)

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("mammothbox.consumer")

JOBS_PROCESSED = Counter(
    "jobs_processed_total", "Messages handled, by service and outcome.", ["service", "outcome"]
)
JOB_DURATION = Histogram(
    "job_processing_duration_seconds",
    "Time spent handling one message, by service and stage.",
    ["service", "stage"],
)

CONSUMER_PAUSED = Gauge(
    "consumer_paused",
    "1 while a consumer waits for a destination that refused its outgoing event.",
    ["service", "queue"],
)

E = TypeVar("E", bound=Event)


class Retryable(Exception):
    """A transient failure: try again later, through the delay queues."""


class Permanent(Exception):
    """A failure that will not go away by trying again: park the message at once."""


@dataclass(frozen=True)
class Delivery:
    """What a handler may want to know about the message it handles."""

    attempt: int
    headers: dict[str, Any]
    routing_key: str | None


Handler = Callable[[E, Delivery], Awaitable[None]]


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text[:2000]


async def _nack_requeue(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as error:  # the channel is gone: the broker requeues it by itself
        log.info("nack failed", error=_error_text(error))


class Consumer(Generic[E]):
    """Consume one queue with one handler under the shared ack policy.

    A handler whose outgoing publish is refused (a full queue downstream, a lost channel)
    has done its work but not told the next stage. That is not the message's failure: it
    goes back to its queue as it came (no attempt spent, nothing parked, the content not
    failed) and the consumer stops taking messages for a while, then resumes by itself. The
    redelivery finds the work done and only publishes again (handlers are idempotent).
    """

    def __init__(
        self,
        bus: Bus,
        spec: QueueSpec,
        model: type[E],
        handler: Handler[E],
        *,
        service: str,
        prefetch: int,
        pause_base: float = 0.5,
        pause_max: float | None = None,
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.model = model
        self.handler = handler
        self.service = service
        self.prefetch = prefetch
        self.max_attempts = len(bus.settings.bus_retry_delays) + 1
        self.pause_base = pause_base
        self.pause_max = bus.settings.bus_pause_max_s if pause_max is None else pause_max
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._holds = 0  # refused publishes since the last message handled in full
        self._resume: asyncio.Task[None] | None = None
        self._storage_root = str(bus.settings.storage_path.resolve())

    async def start(self) -> None:
        channel = await self.bus.channel(prefetch=self.prefetch)
        self._queue = await channel.get_queue(self.spec.name)
        self._tag = await self._queue.consume(self._on_message)

    @property
    def paused(self) -> bool:
        return self._resume is not None and not self._resume.done()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        raw_attempt = headers.get(ATTEMPT_HEADER, 1)
        attempt = int(raw_attempt) if isinstance(raw_attempt, int | str) else 1
        parent = propagate.extract({k: str(v) for k, v in headers.items()})
        token = otel_context.attach(parent)
        start = time.perf_counter()
        try:
            with (
                tracer.start_as_current_span(f"consume {self.spec.name}"),
                structlog.contextvars.bound_contextvars(
                    queue=self.spec.name, message_id=message.message_id, attempt=attempt
                ),
            ):
                outcome = await self._handle(message, headers, attempt)
        finally:
            otel_context.detach(token)
            JOB_DURATION.labels(self.service, self.spec.name).observe(time.perf_counter() - start)
        JOBS_PROCESSED.labels(self.service, outcome).inc()

    async def _handle(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], attempt: int
    ) -> str:
        try:
            event = self.model.model_validate_json(message.body)
        except ValidationError as error:
            # A payload that does not validate will never validate: park it at once.
            return await self._park(message, headers, f"invalid message: {error}", attempt)
        try:
            routing_key = headers.get(ORIGIN_ROUTING_KEY_HEADER) or message.routing_key
            await self.handler(event, Delivery(attempt, headers, routing_key))
        except (PublishRefused, BusUnavailable) as error:
            return await self._hold(message, headers, error)
        except Permanent as error:
            return await self._park(message, headers, _error_text(error), attempt)
        except Exception as error:
            if attempt >= self.max_attempts:
                text = f"gave up after {attempt} attempts: {_error_text(error)}"
                return await self._park(message, headers, text, attempt)
            log.warning("handler failed; will retry", error=_error_text(error))
            return await self._retry(message, headers, attempt)
        await message.ack()
        self._holds = 0
        return "ok"

    async def _hold(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], error: Exception
    ) -> str:
        """Put the message back as it came, then pause consuming (see the class docstring)."""
        self._holds += 1
        pause = min(self.pause_max, self.pause_base * 2 ** min(self._holds - 1, 16))
        log.warning(
            "outgoing publish refused; message put back, consumer paused",
            error=_error_text(error),
            pause_s=pause,
        )
        try:
            # A copy at the tail rather than a requeue: a quorum queue counts requeues
            # towards its delivery limit, and a long stall must not park the message.
            await self.bus.publish(
                self.spec.name,
                message.body,
                message_id=message.message_id or "",
                headers=headers,
                to_queue=True,
            )
        except (PublishRefused, BusUnavailable):
            await _nack_requeue(message)
        else:
            await message.ack()
        self._pause(pause)
        return "held"

    def _pause(self, seconds: float) -> None:
        if self.paused or self._queue is None:
            return
        CONSUMER_PAUSED.labels(self.service, self.spec.name).set(1)
        self._resume = asyncio.create_task(self._pause_then_resume(seconds))

    async def _pause_then_resume(self, seconds: float) -> None:
        assert self._queue is not None
        queue, tag = self._queue, self._tag
        self._tag = None
        if tag is not None:
            try:
                await queue.cancel(tag)
            except Exception as error:  # a channel gone: nothing is delivered anyway
                log.info("consumer cancel failed", error=_error_text(error))
        while True:
            await asyncio.sleep(seconds)
            try:
                self._tag = await queue.consume(self._on_message)
                break
            except Exception as error:
                log.warning("consumer could not resume yet", error=_error_text(error))
                seconds = min(self.pause_max, seconds * 2)
        CONSUMER_PAUSED.labels(self.service, self.spec.name).set(0)
        log.info("consumer resumed", queue=self.spec.name)

    async def _forward(
        self, message: AbstractIncomingMessage, queue: str, headers: dict[str, Any]
    ) -> bool:
        """Publish a copy to `queue` with confirm, then ack; leave it unacked on failure."""
        try:
            await self.bus.publish(
                queue,
                message.body,
                message_id=message.message_id or "",
                headers=headers,
                to_queue=True,
            )
        except Exception as error:
            log.error("could not forward message", target=queue, error=_error_text(error))
            await message.nack(requeue=True)
            return False
        await message.ack()
        return True

    async def _retry(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], attempt: int
    ) -> str:
        headers = {
            ORIGIN_ROUTING_KEY_HEADER: message.routing_key or "",
            **headers,
            ATTEMPT_HEADER: attempt + 1,
        }
        ok = await self._forward(message, self.spec.delay(attempt), headers)
        return "retried" if ok else "requeued"

    async def _park(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], error: str, attempt: int
    ) -> str:
        log.error("message parked", error=error)
        # A dead letter's error is shown through the API: never where the files live.
        error = error.replace(self._storage_root, "<storage>")
        headers = {
            **headers,
            ERROR_HEADER: error,
            ATTEMPT_HEADER: attempt,
            ORIGIN_QUEUE_HEADER: self.spec.name,
        }
        headers.setdefault(ORIGIN_ROUTING_KEY_HEADER, message.routing_key or "")
        ok = await self._forward(message, self.spec.parking, headers)
        return "dead_lettered" if ok else "requeued"
