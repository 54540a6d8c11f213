"""`mammoth ingest`: send the planned batches (plan.py), a few at a time, each waited out
through 503s and dropped connections and sent again with the same idempotency key; count
what was stored, what was there already (a re-run) and what failed."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.progress import Progress, TaskID

from mammoth_cli.client import FAILED, REFUSED, UNAVAILABLE, ApiFailure, Client, answer_of
from mammoth_cli.plan import LocalFile, Walk, batches, describe, idempotency_key

# Files below this are read once into memory and sent from there; larger ones are streamed.
KEEP_BELOW = 1 << 20


class _Counting(io.FileIO):
    """A file that says how many bytes were read from it (aiohttp streams it from a thread)."""

    def __init__(self, path: Path, on_read: Callable[[int], None]) -> None:
        super().__init__(path, "rb")
        self._on_read = on_read

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if chunk:
            self._on_read(len(chunk))
        return chunk


@dataclass
class Summary:
    found: int = 0
    ignored: int = 0
    other_types: int = 0
    uploaded: int = 0
    already: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    not_sent: int = 0
    bytes: int = 0
    seconds: float = 0.0
    jobs: list[dict[str, Any]] = field(default_factory=list)
    stopped: ApiFailure | None = None

    @property
    def exit_code(self) -> int:
        if self.stopped is not None:
            return self.stopped.code
        return FAILED if self.failed else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "ignored": self.ignored,
            "other_types": self.other_types,
            "uploaded": self.uploaded,
            "already_uploaded": self.already,
            "failed": self.failed,
            "not_sent": self.not_sent,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.rate, 1),
            "jobs": self.jobs,
            "stopped": str(self.stopped) if self.stopped else None,
            "exit_code": self.exit_code,
        }

    @property
    def rate(self) -> float:
        return (self.uploaded + self.already) / self.seconds if self.seconds else 0.0

    def text(self) -> str:
        lines = [
            f"{self.found} files: {self.uploaded} uploaded, {self.already} already uploaded,"
            f" {len(self.failed)} failed"
            + (f", {self.not_sent} not sent" if self.not_sent else ""),
            f"left out: {self.ignored} ignored, {self.other_types} of other types",
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({self.rate:.1f} files/s)",
        ]
        lines += [f"failed: {f['path']}: {f['error']}" for f in self.failed]
        if self.stopped is not None:
            lines.append(f"stopped: {self.stopped}")
        return "\n".join(lines)


class Ingest:
    """One run of `mammoth ingest` over a planned walk."""

    def __init__(
        self,
        client: Client,
        fields: dict[str, str],
        *,
        batch: int,
        concurrency: int,
        progress: Progress | None,
    ) -> None:
        self.client = client
        self.fields = fields
        self.batch = batch
        self.concurrency = concurrency
        self.progress = progress
        self.summary = Summary()
        self._overall: TaskID | None = None

    async def run(self, walk: Walk) -> Summary:
        started = time.monotonic()
        self.summary.found = len(walk.files)
        self.summary.ignored, self.summary.other_types = walk.ignored, walk.other_types
        if self.progress is not None:
            total = sum(p.stat().st_size for p in walk.files)
            self._overall = self.progress.add_task("all files", total=total)
        queue: asyncio.Queue[list[Path]] = asyncio.Queue()
        for chunk in batches(walk.files, self.batch):
            queue.put_nowait(chunk)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
        while not queue.empty():
            self.summary.not_sent += len(queue.get_nowait())
        self.summary.seconds = time.monotonic() - started
        return self.summary

    async def _worker(self, queue: asyncio.Queue[list[Path]]) -> None:
        while self.summary.stopped is None:
            try:
                chunk = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                files = [await asyncio.to_thread(describe, path, KEEP_BELOW) for path in chunk]
            except OSError as error:  # gone or unreadable since the walk
                self.summary.failed += [{"path": str(p), "error": str(error)} for p in chunk]
                continue
            try:
                await self._send(files)
            except ApiFailure as failure:
                if failure.code in (UNAVAILABLE, REFUSED):
                    # Every other batch would meet the same: stop, and say what was not sent.
                    self.summary.stopped = failure
                    self.summary.not_sent += len(files)
                    return
                self.summary.failed += [{"path": str(f.path), "error": str(failure)} for f in files]

    async def _send(self, files: list[LocalFile]) -> None:
        key = idempotency_key(files, self.fields)
        size = sum(f.size for f in files)
        task = None
        if self.progress is not None:
            name = files[0].path.name + (f" (+{len(files) - 1})" if len(files) > 1 else "")
            task = self.progress.add_task(name, total=size)

        def advance(n: int) -> None:
            if self.progress is not None and task is not None:
                self.progress.advance(task, n)

        async def once() -> tuple[int, Any, Any]:
            if self.progress is not None and task is not None:
                self.progress.reset(task, total=size)  # a retry sends every byte again
            form = aiohttp.FormData(quote_fields=False)
            for name, value in self.fields.items():
                form.add_field(name, value)
            form.add_field("idempotency_key", key)
            with ExitStack() as files_open:
                for f in files:
                    if f.data is not None:
                        advance(f.size)
                    form.add_field(
                        "files[]",
                        f.data
                        if f.data is not None
                        else files_open.enter_context(_Counting(f.path, advance)),
                        filename=f.path.name,
                        content_type="application/octet-stream",
                    )
                rid = uuid.uuid4().hex
                async with self.client.session.post(
                    self.client.url + "/api/v1/ingest", data=form, headers={"X-Request-ID": rid}
                ) as response:
                    return await answer_of(response)

        try:
            _, body, headers = await self.client.with_retries(once)
        finally:
            if self.progress is not None and task is not None:
                self.progress.remove_task(task)
        # A batch stored before (an earlier, interrupted run) comes back with its own request id.
        replayed = body.get("request_id") != headers.get("X-Request-ID")
        if replayed:
            self.summary.already += len(files)
        else:
            self.summary.uploaded += len(files)
        self.summary.bytes += size
        self.summary.jobs.append(
            {
                "job_id": body["job_id"],
                "files": [str(f.path) for f in files],
                "system_ids": body["system_ids"],
                "already_uploaded": replayed,
            }
        )
        if self.progress is not None and self._overall is not None:
            self.progress.advance(self._overall, size)
