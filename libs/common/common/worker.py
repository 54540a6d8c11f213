"""One worker runtime: a worker declares what it consumes and needs; this runs it.

In the spirit of arq's `Worker` and FastStream's app: a service module builds a `Worker`
with its name and a `setup` that turns the shared resources into its own deps, then
declares its queues and handlers (`consume`), RPC servers (`serve_rpc`), background loops
(`task`), extra readiness checks (`check`) and what its /health says (`info`). The runtime
owns the rest, written once:

- start: storage, the asyncpg pool, the bus (which declares the topology), `setup`, the
  background loops, then the consumers (when the broker is up; the probes say not ready
  until they run) and the probe server (/live, /ready, /health, /metrics);
- stop (SIGTERM/SIGINT in `serve`): draining first — /ready turns false, the consumers and
  RPC servers are cancelled (no new deliveries), the deliveries in flight finish (their
  micro-batches and group commits with them) within SHUTDOWN_GRACE_SECONDS, and what
  `on_drain` registered runs (the clusterer publishes what its outbox holds); a delivery
  still running after the grace is left unacknowledged, so the broker hands it to another
  consumer when the channel closes. Then the loops are cancelled, the stage log flushed, what
  `setup` opened closed (in reverse), the bus and the pool; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
import structlog
import uvloop

from common.bus import Bus
from common.consumer import Consumer, Delivery
from common.db import open_pool
from common.log import configure_logging
from common.messages import Event
from common.probes import serve_worker
from common.rpc import RpcServer
from common.settings import WorkerSettings, load_settings
from common.stage_log import StageLog
from common.storage import Storage, open_storage
from common.telemetry import configure_telemetry, untraced
from common.topology import spec_of

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class WorkerDeps:
    """What every worker's handlers get; a service's deps extend it with its own parts (and
    narrow `settings` to its settings class)."""

    settings: WorkerSettings
    pool: asyncpg.Pool
    bus: Bus
    # None for a worker that never touches content (`Worker(uses_storage=False)`); a service
    # that does narrows it to `Storage` in its deps.
    storage: Storage | None
    probe_port: int = 0  # the port the probe server bound (0 until it runs)


D = TypeVar("D", bound=WorkerDeps)
S = TypeVar("S", bound=WorkerSettings)
E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Resources:
    """What the runtime opens for every worker, handed to its `setup` with the settings."""

    pool: asyncpg.Pool
    bus: Bus
    storage: Storage | None
    # Register what setup opens here (`push_async_callback`): closed in reverse at stop.
    stack: contextlib.AsyncExitStack

    def deps(self, cls: type[D], settings: WorkerSettings, **parts: Any) -> D:
        """The service's deps: these resources and settings, plus its own `parts`."""
        return cls(settings=settings, pool=self.pool, bus=self.bus, storage=self.storage, **parts)


Setup = Callable[[S, Resources], Awaitable[D]]
EventHandler = Callable[[D, Any, Delivery], Awaitable[None]]


@dataclass(frozen=True)
class _Subscription(Generic[D]):
    routing_key: str  # finds the queue: the service's queue bound to this key
    routes: dict[type[Event], EventHandler[D]]
    prefetch: Callable[[D], int]
    timeout_s: Callable[[D], float | None]


@dataclass
class Worker(Generic[S, D]):
    """A worker's declaration; `running(settings)` runs it, `main(...)` is its entry point."""

    service: str
    setup: Setup[S, D]
    # Whether it reads or writes content: then the store is opened, probed by /ready and
    # named in /health (the schemer keeps JSON in the database only).
    uses_storage: bool = True
    _subscriptions: list[_Subscription[D]] = field(default_factory=list)
    _rpc: list[tuple[Callable[[D], str], Callable[[D, bytes], Awaitable[bytes]], int]] = field(
        default_factory=list
    )
    _starters: list[Callable[[D], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[tuple[str, Callable[[D], Coroutine[Any, Any, None]]]] = field(default_factory=list)
    _checks: list[tuple[str, Callable[[D], Awaitable[bool]]]] = field(default_factory=list)
    _drains: list[tuple[str, Callable[[D], Awaitable[Any]]]] = field(default_factory=list)
    _info: Callable[[D], dict[str, Any]] = lambda _: {}
    # While running: what a stop drains, and whether it has begun.
    _consumers: list[Consumer] = field(default_factory=list)
    _rpc_servers: list[RpcServer] = field(default_factory=list)
    _draining: bool = False

    def consume(
        self,
        handlers: dict[type[Event], EventHandler[D]],
        *,
        prefetch: Callable[[D], int],
        timeout_s: Callable[[D], float | None] = lambda _: None,
    ) -> None:
        """Consume the queue bound to these events, decoding each by its routing key.

        Without `timeout_s` the queue's time limit comes from HANDLER_TIMEOUTS or
        HANDLER_TIMEOUT_SECONDS.
        """
        first = next(iter(handlers))
        self._subscriptions.append(
            _Subscription(first.routing_key, dict(handlers), prefetch, timeout_s)
        )

    def serve_rpc(
        self,
        queue: Callable[[D], str],
        answer: Callable[[D, bytes], Awaitable[bytes]],
        *,
        prefetch: int,
    ) -> None:
        """Answer request/reply calls on `queue` (outside the retry and dead-letter path)."""
        self._rpc.append((queue, answer, prefetch))

    def start_with(self, start: Callable[[D], Awaitable[None]]) -> None:
        """Something of its own to start with the consumers (an RPC server of its own kind)."""
        self._starters.append(start)

    def task(self, name: str, run: Callable[[D], Coroutine[Any, Any, None]]) -> None:
        """A background loop that runs while the worker does (cancelled at stop)."""
        self._tasks.append((name, run))

    def on_drain(self, name: str, flush: Callable[[D], Awaitable[Any]]) -> None:
        """Something to finish once the deliveries in flight have (within the grace)."""
        self._drains.append((name, flush))

    def check(self, name: str, ready: Callable[[D], Awaitable[bool]]) -> None:
        """An extra readiness check shown in /ready and /health."""
        self._checks.append((name, ready))

    def info(self, describe: Callable[[D], dict[str, Any]]) -> None:
        """What /health says of this worker besides its checks."""
        self._info = describe

    @contextlib.asynccontextmanager
    async def running(self, settings: S) -> AsyncIterator[D]:
        """Start the worker; stop it all when the block ends. Yields its deps."""
        storage = open_storage(settings) if self.uses_storage else None
        async with contextlib.AsyncExitStack() as stack:  # stops in the reverse order
            if storage is not None:
                stack.push_async_callback(storage.close)
            pool = await stack.enter_async_context(open_pool(settings))
            bus = Bus(settings)
            stack.push_async_callback(bus.close)
            await bus.start(wait=10)
            with untraced():  # start-up work (registrations, checks) is no one's trace
                deps = await self.setup(settings, Resources(pool, bus, storage, stack))
            with untraced():  # background loops: no trace per poll (common.telemetry)
                tasks = [asyncio.create_task(run(deps), name=name) for name, run in self._tasks]
            stack.push_async_callback(_cancel_all, tasks)
            # Closed after the consumers stop (the stack unwinds in reverse): their last
            # reports are written.
            stages = StageLog(pool, retention_days=settings.stage_log_retention_days)
            with untraced():
                stages.start()
            stack.push_async_callback(stages.close)
            consumers: list[Consumer] = []
            self._consumers, self._rpc_servers, self._draining = consumers, [], False
            stack.push_async_callback(_stop_all, consumers)

            def info() -> dict[str, Any]:
                backend = storage.backend if storage is not None else None
                return {"service": self.service, "storage": backend, **self._info(deps)}

            async def checks() -> dict[str, bool]:
                # Not ready once draining: a load balancer or Kubernetes stops sending work.
                own = {"storage": await storage.writable()} if storage is not None else {}
                own |= {name: await ready(deps) for name, ready in self._checks}
                return {**own, "accepting": not self._draining}

            async with serve_worker(
                self.service,
                self._start_consuming(deps, bus, consumers, stages),
                pool,
                bus,
                info,
                settings.worker_http_host,
                settings.worker_http_port,
                extra_checks=checks,
            ) as port:
                yield dataclasses.replace(deps, probe_port=port)

    async def _start_consuming(
        self, deps: D, bus: Bus, consumers: list[Consumer], stages: StageLog
    ) -> None:
        await bus.wait_connected(timeout=float("inf"))
        for start in self._starters:
            await start(deps)
        for queue, answer, prefetch in self._rpc:
            server = RpcServer(bus, queue(deps), _bind(answer, deps), prefetch=prefetch)
            await server.start()
            self._rpc_servers.append(server)
        for sub in self._subscriptions:
            spec = spec_of(bus.specs, self.service, sub.routing_key)
            routes = {model: _bind_event(handle, deps) for model, handle in sub.routes.items()}
            consumer = Consumer(
                bus,
                spec,
                routes,
                service=self.service,
                prefetch=sub.prefetch(deps),
                timeout_s=sub.timeout_s(deps),
                stages=stages,
            )
            await consumer.start()
            consumers.append(consumer)
        log.info(f"{self.service} consuming", queues=[c.spec.name for c in consumers])

    async def serve(self, settings: S) -> None:
        """Run until SIGTERM or SIGINT, then stop (see the module docstring)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            # A second signal takes the default action: a stop that hangs can be cut short.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        async with self.running(settings) as deps:
            await stop.wait()
            await self.drain(deps, settings.shutdown_grace_seconds)
        log.info(f"{self.service} stopped")

    async def drain(self, deps: D, grace: float) -> bool:
        """Stop taking work and let what is in flight finish, within `grace` seconds; whether
        everything did (see the module docstring)."""
        started = time.monotonic()
        self._draining = True
        held = [c.in_flight for c in self._consumers] + [r.in_flight for r in self._rpc_servers]
        log.info(f"{self.service} draining", in_flight=sum(h.count for h in held), grace_s=grace)
        await asyncio.gather(
            *(c.stop() for c in self._consumers),
            *(r.stop() for r in self._rpc_servers),
            return_exceptions=True,
        )
        left = max(0.0, grace - (time.monotonic() - started))
        finished = all(await asyncio.gather(*(h.idle(left) for h in held)))
        for name, flush in self._drains:
            left = max(0.1, grace - (time.monotonic() - started))
            try:
                await asyncio.wait_for(flush(deps), left)
            except Exception as error:  # the durable state stays for the next start
                log.warning(f"{self.service} could not {name} before stopping", error=str(error))
        elapsed = round(time.monotonic() - started, 3)
        if finished:
            log.info(f"{self.service} drained", seconds=elapsed)
        else:
            log.warning(
                f"{self.service} grace period over; unfinished deliveries go back to the broker",
                in_flight=sum(h.count for h in held),
                seconds=elapsed,
            )
        return finished

    def main(self, settings_cls: type[S]) -> None:
        """The `python -m <service>` entry point: settings, logging, telemetry, run."""
        settings = load_settings(settings_cls, listen="worker_http_host")
        configure_logging(settings, self.service)
        configure_telemetry(self.service)
        uvloop.install()
        asyncio.run(self.serve(settings))


def _bind(answer: Callable[[D, bytes], Awaitable[bytes]], deps: D) -> Callable[[bytes], Any]:
    async def call(body: bytes) -> bytes:
        return await answer(deps, body)

    return call


def _bind_event(handle: EventHandler[D], deps: D) -> Callable[[Any, Delivery], Any]:
    async def call(event: Any, delivery: Delivery) -> None:
        await handle(deps, event, delivery)

    return call


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _stop_all(consumers: list[Consumer]) -> None:
    await asyncio.gather(*(c.stop() for c in consumers), return_exceptions=True)
