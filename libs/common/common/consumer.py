"""One ack policy, in one wrapper: ack on success, retry through delay queues, or park.

A consumer decodes each message by its routing key through the registry in
`common.messages` (so `media.embedded.v1` and a later `.v2` can share a queue during a
rollout) and hands it to the handler declared for that event type, within a time limit.
What a handler raises decides the outcome:

- nothing: ack;
- `Permanent`: park at once (dead letter, with the error);
- `Retryable`: an expected, transient condition ("not filed yet", "VLM unavailable"): retried
  through the delay queues, logged as a warning without a traceback; parked after the last
  attempt with the error alone;
- any other exception, or the time limit (`HANDLER_TIMEOUT_SECONDS`): unexpected, so it is
  logged with its traceback (`exc_info`), retried the same way, and parked after the last
  attempt with the traceback kept on the dead letter (bounded);
- `PublishRefused` / `BusUnavailable`: the work is done but the next stage was not told:
  held (see `Consumer`);
- `StorageUnavailable`: the content store cannot be reached (S3 down, throttling past the
  retries): no fault of the message either, so held the same way, and an outage longer than
  the retry tiers parks nothing.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import Gauge
from pydantic import ValidationError

from common import stage_log
from common.aio import InFlight
from common.bus import Bus, BusUnavailable, PublishRefused
from common.messages import EVENTS, Event
from common.metrics import JOB_DURATION, JOBS_PROCESSED, declare_stage
from common.storage import StorageUnavailable
from common.telemetry import current_trace_id, set_attributes
from common.topology import (
    ATTEMPT_HEADER,
    ENQUEUED_AT_HEADER,
    ERROR_HEADER,
    ORIGIN_QUEUE_HEADER,
    ORIGIN_ROUTING_KEY_HEADER,
    PUBLISHED_AT_HEADER,
    TRACEBACK_HEADER,
    QueueSpec,
)

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("mammothbox.consumer")

IN_FLIGHT = Gauge(
    "consumer_in_flight", "Deliveries being handled, by service and queue.", ["service", "queue"]
)
CONSUMER_PAUSED = Gauge(
    "consumer_paused",
    "1 while a consumer waits for a destination that refused its outgoing event.",
    ["service", "queue"],
)

# The ids an event may carry, bound into the log context of everything its handler logs.
LOG_IDS = ("job_id", "upload_id", "content_id")
# A dead letter keeps the end of the traceback (the failing frames and the exception).
MAX_TRACEBACK_CHARS = 8000


class Retryable(Exception):
    """An expected, transient condition: retry later, and log it without a traceback."""


class Permanent(Exception):
    """A failure that will not go away by trying again: park the message at once."""


@dataclass(frozen=True)
class Delivery:
    """What a handler may want to know about the message it handles."""

    attempt: int
    headers: dict[str, Any]
    routing_key: str | None


Handler = Callable[[Any, Delivery], Awaitable[None]]
# What a consumer handles: an event type and its handler, per type (several versions may
# share one queue).
Routes = Mapping[type[Event], Handler]


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text[:2000]


def _traceback_text(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    return text[-MAX_TRACEBACK_CHARS:]


def _ids(event: Event) -> dict[str, str]:
    return {key: str(getattr(event, key)) for key in LOG_IDS if hasattr(event, key)}


async def _nack_requeue(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as error:  # the channel is gone: the broker requeues it by itself
        log.info("nack failed", error=_error_text(error))


@dataclass
class _Report:
    """One delivery as the stage log and the span see it: when it started (epoch), what it
    was (once its event is known), and the error it ended with."""

    started: float
    delivery: stage_log.Delivery | None = None
    error: str | None = None


def _epoch(milliseconds: object) -> float | None:
    """Epoch seconds from a header's epoch milliseconds; None when absent or not a number."""
    try:
        return float(milliseconds) / 1000 if isinstance(milliseconds, int | str) else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _Failure:
    """A handler's failure: retried unless `final`; `traceback` only for the unexpected."""

    error: str
    traceback: str | None = None
    final: bool = False


@dataclass(frozen=True)
class _Held:
    """The handler's outgoing publish was refused, or the store is unreachable (see
    `Consumer`)."""

    error: str
    why: str = "outgoing publish refused; message put back, consumer paused"


class Consumer:
    """Consume one queue with one handler per event type under the shared ack policy.

    A handler whose outgoing publish is refused (a full queue downstream, a lost channel)
    has done its work but not told the next stage. That is not the message's failure: it
    goes back to its queue as it came (no attempt spent, nothing parked, the content not
    failed) and the consumer stops taking messages for a while, then resumes by itself. The
    redelivery finds the work done and only publishes again (handlers are idempotent). A
    handler that cannot reach the content store is held the same way: its work waits for
    the store instead of spending its attempts.
    """

    def __init__(
        self,
        bus: Bus,
        spec: QueueSpec,
        routes: Routes,
        *,
        service: str,
        prefetch: int,
        timeout_s: float | None = None,
        pause_base: float = 0.5,
        pause_max: float | None = None,
        stages: stage_log.StageLog | None = None,
    ) -> None:
        self.bus = bus
        self.stages = stages
        self.spec = spec
        self.routes = {model.routing_key: (model, handler) for model, handler in routes.items()}
        for key, (model, _) in self.routes.items():
            if EVENTS.get(key) is not model:
                raise ValueError(f"{model.__name__} is not the registered event of {key}")
        self.service = service
        self.prefetch = prefetch
        declare_stage(service, spec.stage)
        CONSUMER_PAUSED.labels(service, spec.name).set(0)
        IN_FLIGHT.labels(service, spec.name).set(0)
        settings = bus.settings
        self.timeout_s = timeout_s if timeout_s is not None else settings.timeout_for(spec.name)
        self.max_attempts = len(settings.bus_retry_delays) + 1
        self.pause_base = pause_base
        self.pause_max = settings.bus_pause_max_s if pause_max is None else pause_max
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._holds = 0  # refused publishes since the last message handled in full
        self._resume: asyncio.Task[None] | None = None
        self.in_flight = InFlight()  # deliveries being handled (a stop waits for them)
        self._storage_root = str(settings.storage_path.resolve())

    async def start(self) -> None:
        channel = await self.bus.channel(prefetch=self.prefetch)
        self._queue = await channel.get_queue(self.spec.name)
        self._tag = await self._queue.consume(self._on_message)

    async def stop(self) -> None:
        """Stop taking deliveries (cancel the consumer); unacked messages go back."""
        if self._resume is not None:
            self._resume.cancel()
        await self._cancel()

    @property
    def paused(self) -> bool:
        return self._resume is not None and not self._resume.done()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        with self.in_flight, IN_FLIGHT.labels(self.service, self.spec.name).track_inprogress():
            await self._deliver(message)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        raw_attempt = headers.get(ATTEMPT_HEADER, 1)
        attempt = int(raw_attempt) if isinstance(raw_attempt, int | str) else 1
        parent = propagate.extract({k: str(v) for k, v in headers.items()})
        token = otel_context.attach(parent)
        start = time.perf_counter()
        report = _Report(time.time())
        outcome = "failed"
        try:
            with (
                tracer.start_as_current_span(
                    f"consume {self.spec.name}",
                    kind=trace.SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": "rabbitmq",
                        "messaging.destination.name": self.spec.name,
                        "messaging.message.id": message.message_id or "",
                        "mammothbox.stage": self.spec.stage,
                        "mammothbox.attempt": attempt,
                    },
                ) as span,
                structlog.contextvars.bound_contextvars(
                    queue=self.spec.name, message_id=message.message_id, attempt=attempt
                ),
            ):
                outcome = await self._handle(message, headers, attempt, report)
                span.set_attribute("mammothbox.outcome", outcome)
                if report.error is not None:
                    span.set_status(trace.StatusCode.ERROR, report.error[:500])
        finally:
            otel_context.detach(token)
            JOB_DURATION.labels(self.service, self.spec.stage).observe(time.perf_counter() - start)
            if self.stages is not None and report.delivery is not None:
                self.stages.finished(
                    report.delivery, report.started, time.time(), outcome, report.error
                )
        JOBS_PROCESSED.labels(self.service, outcome).inc()

    def _report_start(
        self,
        message: AbstractIncomingMessage,
        headers: dict[str, Any],
        attempt: int,
        event: Event,
        report: _Report,
    ) -> None:
        """Tag the span with the event's ids and tell the stage log the delivery started."""
        ids = _ids(event)
        upload_ids = [str(u) for u in getattr(event, "upload_ids", None) or []]
        set_attributes(
            {
                **{f"mammothbox.{key}": value for key, value in ids.items()},
                "mammothbox.upload_ids": upload_ids or None,
                "mammothbox.model_id": getattr(event, "model_id", None),
            }
        )
        if self.stages is None:
            return
        uploads = list(getattr(event, "upload_ids", None) or [])
        if (single := getattr(event, "upload_id", None)) is not None:
            uploads.append(single)
        report.delivery = stage_log.Delivery(
            stage=self.spec.stage,
            message_id=event.message_id,
            service=self.service,
            queue=self.spec.name,
            attempt=attempt,
            job_id=getattr(event, "job_id", None),
            content_id=getattr(event, "content_id", None),
            upload_ids=uploads,
            queued_at=_epoch(headers.get(ENQUEUED_AT_HEADER)),
            published_at=_epoch(headers.get(PUBLISHED_AT_HEADER)),
            trace_id=current_trace_id(),
        )
        self.stages.started(report.delivery, report.started)

    def _routing_key(self, message: AbstractIncomingMessage, headers: dict[str, Any]) -> str:
        """The event's own routing key: a retry or a hold comes back through the default
        exchange (keyed by the queue's name) and carries the original in a header."""
        key = str(headers.get(ORIGIN_ROUTING_KEY_HEADER) or message.routing_key or "")
        if key == self.spec.name and len(self.routes) == 1:
            # Published straight to the queue without a key: the one event it handles.
            key = next(iter(self.routes))
        return key

    async def _handle(
        self,
        message: AbstractIncomingMessage,
        headers: dict[str, Any],
        attempt: int,
        report: _Report,
    ) -> str:
        routing_key = self._routing_key(message, headers)
        route = self.routes.get(routing_key)
        if route is None:
            failure = _Failure(f"no handler here for routing key {routing_key!r}", final=True)
            return await self._park(message, headers, failure, attempt, routing_key)
        model, handler = route
        try:
            event = model.model_validate_json(message.body)
        except ValidationError as error:
            # A payload that does not validate will never validate: park it at once.
            failure = _Failure(f"invalid message: {error}", final=True)
            return await self._park(message, headers, failure, attempt, routing_key)
        with structlog.contextvars.bound_contextvars(**_ids(event)):
            self._report_start(message, headers, attempt, event, report)
            outcome = await self._run(handler, event, Delivery(attempt, headers, routing_key))
            if outcome is None:
                await message.ack()
                self._holds = 0
                return "ok"
            report.error = outcome.error
            if isinstance(outcome, _Held):
                return await self._hold(message, headers, outcome, routing_key)
            failure = outcome
            if failure.final:
                return await self._park(message, headers, failure, attempt, routing_key)
            if attempt >= self.max_attempts:
                text = f"gave up after {attempt} attempts: {failure.error}"
                failure = _Failure(text, failure.traceback)
                return await self._park(message, headers, failure, attempt, routing_key)
            return await self._retry(message, headers, attempt, routing_key)

    async def _run(
        self, handler: Handler, event: Event, delivery: Delivery
    ) -> _Failure | _Held | None:
        """Run the handler within its time limit: None on success, else what went wrong."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await handler(event, delivery)
        except (PublishRefused, BusUnavailable) as error:
            return _Held(_error_text(error))
        except StorageUnavailable as error:
            why = "content store unavailable; message put back, consumer paused"
            return _Held(_error_text(error), why)
        except Permanent as error:
            return _Failure(_error_text(error), final=True)
        except Retryable as error:
            log.warning("handler not done yet; will retry", error=_error_text(error))
            return _Failure(_error_text(error))
        except TimeoutError as error:
            text = f"handler timed out after {self.timeout_s:g} s"
            log.error("handler failed", error=text, exc_info=error)
            return _Failure(text, _traceback_text(error))
        except Exception as error:
            log.error("handler failed", error=_error_text(error), exc_info=error)
            return _Failure(_error_text(error), _traceback_text(error))
        return None

    async def _hold(
        self,
        message: AbstractIncomingMessage,
        headers: dict[str, Any],
        held: _Held,
        routing_key: str,
    ) -> str:
        """Put the message back as it came, then pause consuming (see the class docstring)."""
        self._holds += 1
        pause = min(self.pause_max, self.pause_base * 2 ** min(self._holds - 1, 16))
        log.warning(
            held.why,
            error=held.error,
            pause_s=pause,
        )
        try:
            # A copy at the tail rather than a requeue: a quorum queue counts requeues
            # towards its delivery limit, and a long stall must not park the message.
            await self.bus.publish(
                self.spec.name,
                message.body,
                message_id=message.message_id or "",
                headers={**headers, ORIGIN_ROUTING_KEY_HEADER: routing_key},
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

    async def _cancel(self) -> None:
        queue, tag = self._queue, self._tag
        self._tag = None
        if queue is not None and tag is not None:
            try:
                await queue.cancel(tag)
            except Exception as error:  # a channel gone: nothing is delivered anyway
                log.info("consumer cancel failed", error=_error_text(error))

    async def _pause_then_resume(self, seconds: float) -> None:
        assert self._queue is not None
        queue = self._queue
        await self._cancel()
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
        self,
        message: AbstractIncomingMessage,
        headers: dict[str, Any],
        attempt: int,
        routing_key: str,
    ) -> str:
        headers = {**headers, ORIGIN_ROUTING_KEY_HEADER: routing_key, ATTEMPT_HEADER: attempt + 1}
        ok = await self._forward(message, self.spec.delay(attempt), headers)
        return "retried" if ok else "requeued"

    async def _park(
        self,
        message: AbstractIncomingMessage,
        headers: dict[str, Any],
        failure: _Failure,
        attempt: int,
        routing_key: str,
    ) -> str:
        log.error("message parked", error=failure.error)
        # A dead letter is shown through the API: never where the files live.
        headers = {
            **headers,
            ERROR_HEADER: self._scrub(failure.error),
            ATTEMPT_HEADER: attempt,
            ORIGIN_QUEUE_HEADER: self.spec.name,
            ORIGIN_ROUTING_KEY_HEADER: routing_key,
        }
        headers.pop(TRACEBACK_HEADER, None)
        if failure.traceback is not None:
            headers[TRACEBACK_HEADER] = self._scrub(failure.traceback)
        ok = await self._forward(message, self.spec.parking, headers)
        return "dead_lettered" if ok else "requeued"

    def _scrub(self, text: str) -> str:
        return text.replace(self._storage_root, "<storage>")
