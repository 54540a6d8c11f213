"""A bounded pool of decoder processes where a crash or a runaway fails only its own item.

Design: `workers` long-lived processes, each with its own pipe and one item at a time,
started from multiprocessing's forkserver (a clean single-threaded server, never a fork of
this threaded, event-loop-running process). The parent always knows which item each
worker holds, so a worker that dies (segfault, `os._exit`, the OOM killer) or overruns the
timeout (we SIGKILL it) fails that item only, and its slot gets a fresh worker.
`concurrent.futures.ProcessPoolExecutor` cannot do this: one dead worker breaks the whole
executor and fails every item in flight, and it cannot kill one stuck task.
An item whose worker died is tried once more on a fresh one, since the worker may have
died before the item reached it (killed while idle); a file that really crashes the
decoder crashes it twice. Timeouts are not retried.

Memory: each worker caps its address space with RLIMIT_AS at what it had mapped after
start-up plus `memory_limit_bytes`, so shared libraries and per-core BLAS buffers (which
differ by machine) do not eat the budget. Going over raises MemoryError in the worker,
reported as a DecodeError; the worker lives on.

The event loop never blocks: the pipe send/recv of an item, process start and reaping run
on a small thread pool. A timeout kills the process, which turns the waiting recv into EOF.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal, ParamSpec, TypeVar, overload

from PIL import Image
from prometheus_client import Counter

from embedder.decode import Decoded, DecodedVideo, DecodeError, decode_image, decode_video
from embedder.manifest import Preprocess

P = ParamSpec("P")
R = TypeVar("R")

# A decoder worker lost, so that the next item starts a fresh one: it crashed on an item, was
# killed for overrunning the timeout or because its caller gave up, or died while idle.
RESTART_REASONS = ("crash", "timeout", "cancel", "idle_death")
RESTARTS = Counter(
    "embedder_decoder_restarts_total", "Decoder workers lost and replaced, by reason.", ["reason"]
)
for _reason in RESTART_REASONS:
    RESTARTS.labels(_reason)
_JOIN_S = 5.0  # a worker whose pipe closed is exiting; this bounds the wait for its status
_START_S = 60.0  # imports on a cold, busy machine can be slow; a hang here is still a bug


class PoolClosed(RuntimeError):
    """The pool was closed while the item waited or ran; the item itself may be fine."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection


class _WorkerDied(Exception):
    def __init__(self, exitcode: int | None) -> None:
        super().__init__(exitcode)
        self.exitcode = exitcode


def _mapped_bytes() -> int:
    """This process's current address-space size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _limit_memory(extra_bytes: int) -> None:
    limit = _mapped_bytes() + extra_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _serve(conn: Connection, memory_limit_bytes: int) -> None:
    """Worker process: run (fn, args, kwargs) calls from the pipe until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    Image.init()  # import every Pillow plugin now, outside the memory budget
    _limit_memory(memory_limit_bytes)
    conn.send(True)  # ready: start-up is not charged to the first item's time limit
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except EOFError:
            return
        reply: tuple[bool, Any]
        try:
            reply = (True, fn(*args, **kwargs))
        except MemoryError:
            reply = (False, DecodeError(f"out of memory (decoder limit {memory_limit_bytes} B)"))
        except Exception as error:
            reply = (False, error)
        try:
            conn.send(reply)  # pickles in full before writing, so a failure sends nothing
        except Exception as error:
            conn.send((False, DecodeError(f"result not returned: {type(error).__name__}")))


def _exchange(worker: _Worker, call: tuple[Any, ...]) -> tuple[bool, Any]:
    """Send one call and wait for its reply; on a dead worker, reap it and say how it ended."""
    try:
        worker.conn.send(call)
        reply: tuple[bool, Any] = worker.conn.recv()
        return reply
    except (EOFError, OSError):
        worker.process.join(_JOIN_S)
        if worker.process.exitcode is None:  # pipe broken but still running: make sure
            worker.process.kill()
            worker.process.join(_JOIN_S)
        worker.conn.close()
        raise _WorkerDied(worker.process.exitcode) from None


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class DecoderPool:
    """Decode images and videos in worker processes with memory and time limits."""

    def __init__(
        self,
        preprocess: Preprocess,
        *,
        workers: int,
        memory_limit_bytes: int,
        timeout_s: float,
        thumbnail_size: int = 256,
        max_pixels: int = 50_000_000,
        video_max_frames: int = 8,
    ) -> None:
        if workers < 1:
            raise ValueError("a decoder pool needs at least one worker")
        self.preprocess = preprocess
        self.memory_limit_bytes = memory_limit_bytes
        self.timeout_s = timeout_s
        self.thumbnail_size = thumbnail_size
        self.max_pixels = max_pixels
        self.video_max_frames = video_max_frames
        self._ctx = multiprocessing.get_context("forkserver")
        # The server imports the decoders once, so a replacement worker starts in
        # milliseconds, not the quarter second imports take. (No effect once it runs.)
        self._ctx.set_forkserver_preload(["__main__", "embedder.decoder_pool"])
        # A slot holds an idle worker, or None until one is needed (started lazily).
        self._slots: asyncio.Queue[_Worker | None] = asyncio.Queue()
        for _ in range(workers):
            self._slots.put_nowait(None)
        # One thread per slot, plus room for threads still reaping a killed worker.
        self._threads = ThreadPoolExecutor(2 * workers, thread_name_prefix="decoder-pool")
        self._live: set[_Worker] = set()
        self._closed = False

    async def start(self) -> None:
        """Start every worker now, so start-up costs and failures show at start, not mid-work."""
        slots = [self._slots.get_nowait() for _ in range(self._slots.qsize())]
        started = await asyncio.gather(
            *(self._ensure_worker(slot) for slot in slots), return_exceptions=True
        )
        for worker in started:
            self._slots.put_nowait(worker if isinstance(worker, _Worker) else None)
        for error in started:
            if isinstance(error, BaseException):
                raise error

    @property
    def alive(self) -> int:
        """Worker processes running now."""
        return sum(worker.process.is_alive() for worker in self._live)

    @overload
    async def decode(
        self, path: str, kind: Literal["image"], preprocess: Preprocess | None = None
    ) -> Decoded: ...
    @overload
    async def decode(
        self, path: str, kind: Literal["video"], preprocess: Preprocess | None = None
    ) -> DecodedVideo: ...
    @overload
    async def decode(
        self, path: str, kind: Literal["image", "video"], preprocess: Preprocess | None = None
    ) -> Decoded | DecodedVideo: ...
    async def decode(
        self, path: str, kind: Literal["image", "video"], preprocess: Preprocess | None = None
    ) -> Decoded | DecodedVideo:
        """Decode one file in a worker; DecodeError when it is bad, crashes or takes too long.

        The model input follows `preprocess` (another model's, in a model switch), else the
        pool's. RuntimeError (PoolClosed, or a worker that cannot start) blames the pool, not
        the file.
        """
        preprocess = self.preprocess if preprocess is None else preprocess
        if kind == "image":
            return await self._run(
                decode_image,
                path,
                preprocess,
                thumbnail_size=self.thumbnail_size,
                max_pixels=self.max_pixels,
            )
        if kind == "video":
            return await self._run(
                decode_video,
                path,
                preprocess,
                thumbnail_size=self.thumbnail_size,
                max_frames=self.video_max_frames,
                max_pixels=self.max_pixels,
            )
        raise ValueError(f"unknown media kind {kind!r}")

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a picklable module-level function in a worker, within the time limit."""
        call = (fn, args, kwargs)
        worker = await self._slots.get()
        try:
            for attempt in range(2):
                worker = await self._ensure_worker(worker)
                try:
                    ok, value = await self._call(worker, call)
                except _WorkerDied as died:
                    RESTARTS.labels("crash").inc()
                    worker = None
                    if self._closed:
                        raise PoolClosed("decoder pool is closed") from None
                    if attempt == 0:
                        continue  # it may have died before the item reached it: once more
                    raise DecodeError(f"decoder crashed ({_describe(died.exitcode)})") from None
                except BaseException:
                    if worker not in self._live:  # killed on timeout or cancel
                        worker = None  # the slot starts afresh
                    raise
                if ok:
                    result: R = value
                    return result
                raise value
            raise AssertionError("unreachable")
        finally:
            self._slots.put_nowait(worker)

    async def _ensure_worker(self, worker: _Worker | None) -> _Worker:
        """The slot's worker if it is alive, else a freshly started one."""
        if self._closed:
            raise PoolClosed("decoder pool is closed")
        if worker is not None:
            if worker.process.is_alive():
                return worker
            self._live.discard(worker)  # died while idle (the OOM killer, say)
            RESTARTS.labels("idle_death").inc()
            worker.conn.close()
        fresh = await asyncio.get_running_loop().run_in_executor(self._threads, self._start)
        self._live.add(fresh)
        if self._closed:  # closed while it started
            self._kill(fresh)
            raise PoolClosed("decoder pool is closed")
        return fresh

    async def _call(self, worker: _Worker, call: tuple[Any, ...]) -> tuple[bool, Any]:
        """One item on one worker, killing the worker on timeout or cancellation."""
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._threads, _exchange, worker, call)
        job.add_done_callback(_retrieve)
        try:
            done, _ = await asyncio.wait({job}, timeout=self.timeout_s)
        except asyncio.CancelledError:
            RESTARTS.labels("cancel").inc()
            self._kill(worker)
            raise
        if not done:
            RESTARTS.labels("timeout").inc()
            self._kill(worker)  # its thread then sees EOF, reaps and ends
            raise DecodeError(f"decoding took longer than {self.timeout_s:g}s")
        try:
            return job.result()
        except _WorkerDied:
            self._live.discard(worker)
            raise

    def _start(self) -> _Worker:
        """Start one worker process (blocking; runs on the thread pool)."""
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_serve, args=(child, self.memory_limit_bytes), name="decoder", daemon=True
        )
        process.start()
        child.close()  # only the worker holds its end, so its death reads as EOF here
        try:
            if not parent.poll(_START_S):
                raise TimeoutError(f"not ready within {_START_S:g}s")
            parent.recv()
        except (EOFError, OSError) as error:  # TimeoutError is an OSError
            process.kill()
            process.join(_JOIN_S)
            parent.close()
            reason = error if isinstance(error, TimeoutError) else _describe(process.exitcode)
            raise RuntimeError(f"decoder worker failed to start: {reason}") from None
        return _Worker(process, parent)

    def _kill(self, worker: _Worker) -> None:
        self._live.discard(worker)
        worker.process.kill()

    async def close(self) -> None:
        """Stop every worker; items still running fail with PoolClosed."""
        if self._closed:
            return
        self._closed = True
        workers = list(self._live)
        for worker in workers:
            worker.process.kill()  # decoding is pure: nothing to flush, nothing lost

        def join_all() -> None:
            self._threads.shutdown(wait=True)  # running exchanges end: their workers are dead
            for worker in workers:
                worker.process.join(_JOIN_S)
                worker.conn.close()

        await asyncio.to_thread(join_all)


def _retrieve(job: asyncio.Future[Any]) -> None:
    """Mark a job's exception as seen; after a timeout or cancel nobody awaits it."""
    if not job.cancelled():
        job.exception()
