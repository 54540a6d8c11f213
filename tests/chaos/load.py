"""The chaos suite's uploads: images (some the same bytes again) and JSON documents, each
with an idempotency key of its own, retried with that key until the gateway acknowledges it.

A client that keeps its key across retries is what the gateway's idempotency promises to:
a request whose answer was lost (the gateway killed after its commit, the connection cut)
is answered with the first job on the next try, never recorded twice. So every upload here
ends acknowledged exactly once, whatever fault the driver injected meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

from tests.clusterer.conftest import colour_png

COLLECTION = "chaos_docs"
DOCUMENTS_PER_UPLOAD = 5
RETRY_DELAY_S = 0.2
PACE_S = 0.1  # between one client's uploads


@dataclass
class Upload:
    n: int
    key: str
    kind: str  # "image" or "json"
    image: bytes | None = None
    documents: list[dict[str, object]] | None = None
    job: str | None = None
    tries: int = 0
    acknowledged_at: float | None = None


@dataclass
class Load:
    """Uploads added by the driver, sent by `workers` concurrent clients."""

    base: str
    workers: int = 3
    uploads: list[Upload] = field(default_factory=list)
    # What the gateway answered before an acknowledgement: status (or error kind) -> count.
    refusals: Counter[str] = field(default_factory=Counter)
    _queue: asyncio.Queue[Upload] = field(default_factory=asyncio.Queue)
    _images: list[bytes] = field(default_factory=list)

    def add(self, count: int, *, queue: bool = True) -> list[Upload]:
        """`count` more uploads: every fifth a JSON upload, every seventh the bytes of an
        earlier image again (content stored once, a second upload of it). Without `queue`
        the caller sends them itself."""
        added = []
        for _ in range(count):
            n = len(self.uploads)
            upload = Upload(n, f"chaos-{uuid.uuid4().hex}", "json" if n % 5 == 4 else "image")
            if upload.kind == "json":
                upload.documents = [
                    {"upload": n, "k": k, "name": f"document {k}", "size": n * 10 + k}
                    for k in range(DOCUMENTS_PER_UPLOAD)
                ]
            elif n % 7 == 3 and self._images:
                upload.image = self._images[(n * 31) % len(self._images)]
            else:
                colour = ((n * 37) % 256, (n * 97) % 256, (n * 29) % 256)
                upload.image = colour_png(colour, seed=n)
                self._images.append(upload.image)
            self.uploads.append(upload)
            if queue:
                self._queue.put_nowait(upload)
            added.append(upload)
        return added

    def enqueue(self, upload: Upload) -> None:
        self._queue.put_nowait(upload)

    @property
    def acknowledged(self) -> int:
        return sum(1 for u in self.uploads if u.job is not None)

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._worker(session) for _ in range(self.workers)))

    async def drained(self, timeout: float) -> None:
        """Until every upload added so far is acknowledged."""
        deadline = time.monotonic() + timeout
        while self.acknowledged < len(self.uploads):
            if time.monotonic() > deadline:
                waiting = [u.n for u in self.uploads if u.job is None]
                raise AssertionError(f"uploads {waiting[:20]} never acknowledged: {self.refusals}")
            await asyncio.sleep(0.1)

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            upload = await self._queue.get()
            await asyncio.sleep(PACE_S)  # spread over time, so that faults meet uploads
            while upload.job is None:
                upload.tries += 1
                outcome = await send(session, self.base, upload)
                if outcome.startswith("job:"):
                    upload.job = outcome[4:]
                    upload.acknowledged_at = time.monotonic()
                    break
                self.refusals[outcome] += 1
                await asyncio.sleep(RETRY_DELAY_S)


async def send(session: aiohttp.ClientSession, base: str, upload: Upload) -> str:
    """One try: "job:<id>" when acknowledged, else the status or the error's kind."""
    form = aiohttp.FormData()
    if upload.kind == "json":
        form.add_field("payload", orjson.dumps(upload.documents).decode())
        form.add_field("collection", COLLECTION)
    else:
        assert upload.image is not None
        form.add_field(
            "files[]", upload.image, filename=f"{upload.n}.png", content_type="image/png"
        )
    try:
        async with session.post(
            f"{base}/api/v1/ingest", data=form, headers={"Idempotency-Key": upload.key}
        ) as response:
            if response.status == 202:
                return "job:" + str((await response.json())["job_id"])
            body = await response.text()
            if response.status == 503:  # which refusal: the database, the disk, a backlog
                return f"503 {orjson.loads(body).get('error')}"
            if response.status >= 500:
                return f"{response.status}: {body[:300]}"
            return str(response.status)
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        return type(error).__name__
