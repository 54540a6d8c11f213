"""The storage sweeper: removes stored objects no row refers to, and stale temp files.

Orphans come from an ingest whose transaction failed after its files were placed (the
database down, a 500, a gateway killed between the two), from an embedder save that failed
after its thumbnail was stored, and temp files from a process killed mid-upload. It runs
in every gateway (SWEEP_INTERVAL_SECONDS; one at a time across gateways, the others skip
their turn) and once on demand: `python -m gateway.sweep [--min-age SECONDS]`.

Why it never removes a file that an ingest relies on. Ingest places its files (fsync, a
link into objects/) *before* its transaction, and keeps a copy that was stored already as
it is, so an old orphan can be exactly what a new upload of the same bytes relies on. Both
sides take the object's lock (`repo.lock_objects`: a transaction-level advisory lock keyed
on the sha256):

- the sweeper, holding it, looks for a row in a statement *after* the one that took the
  lock (so it sees whatever an earlier holder committed) and removes the file;
- ingest takes it in the transaction that writes its rows and, holding it, places again
  any file removed since it first placed it (from its temp file, kept until the request
  ends) before it commits.

So a removal happens either before the ingest holds the lock, and the ingest puts the file
back, or after the ingest committed, and the sweeper finds the row. The age bound (a file's
mtime, refreshed when existing content is stored again) keeps the sweeper away from files
being written in the normal case, and is what protects writers that take no lock: the
embedder's thumbnails (stored, then saved with the content's facts).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import asyncpg
import structlog
import uvloop
from prometheus_client import Counter

from common.db import open_pool
from common.log import configure_logging
from common.settings import load_settings
from common.storage import Storage, StorageUnavailable, open_storage
from gateway.repo.objects import lock_objects, referenced_keys, take_singleton_lock
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

SWEPT = Counter(
    "storage_swept_total",
    "What the storage sweeper removed, by kind: object (no row refers to it), temp (a temp"
    " file or object of an upload that never finished), multipart (an S3 multipart upload"
    " never completed, aborted).",
    ["kind"],
)
_CHUNK = 1000


@dataclass(frozen=True)
class Swept:
    objects: int
    temp: int


class Sweeper:
    """Sweeps the storage of one deployment; `min_age` is SWEEP_MIN_AGE_SECONDS."""

    def __init__(self, pool: asyncpg.Pool, storage: Storage, min_age: float) -> None:
        self.pool = pool
        self.storage = storage
        self.min_age = min_age

    async def run(self, interval: float) -> None:
        """Sweep every `interval` seconds, the first time one interval after start."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except (
                OSError,
                StorageUnavailable,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as error:
                log.warning("storage sweep failed", error=str(error))
            except Exception:  # a bug must not end the sweeps for good, silently
                log.exception("storage sweep failed")

    async def sweep(
        self, min_age: float | None = None, *, temp_min_age: float | None = None, wait: bool = False
    ) -> Swept | None:
        """Remove orphans older than `min_age` seconds (default: the setting) and temp files
        older than `temp_min_age` (default: `min_age`); None when another process is
        sweeping and `wait` is false.

        A temp file of an upload in progress is written as its bytes arrive, and kept until
        the request ends: an age below the longest upload may remove one (that upload then
        fails; its rows never commit without their file).
        """
        age = self.min_age if min_age is None else min_age
        temp_age = age if temp_min_age is None else temp_min_age
        started = time.monotonic()
        # Files written or refreshed after this instant are kept, even with an age of 0.
        cutoff = time.time() - age
        async with self.pool.acquire() as guard, guard.transaction():
            # One sweeper at a time: held, for the whole sweep, in a transaction of its own.
            if not await take_singleton_lock(guard, "mammothbox.sweeper", wait):
                log.info("storage sweep skipped: another process is sweeping")
                return None
            stale = await self.storage.remove_stale_temp(temp_age)
            SWEPT.labels("temp").inc(stale.files)
            SWEPT.labels("multipart").inc(stale.uploads)
            temp = stale.files + stale.uploads
            async with self.pool.acquire() as conn:
                objects = await self._objects(conn, cutoff)
        log.info(
            "storage swept",
            objects=objects,
            temp=temp,
            min_age_seconds=age,
            seconds=round(time.monotonic() - started, 3),
        )
        return Swept(objects, temp)

    async def _objects(self, conn: asyncpg.Connection, cutoff: float) -> int:
        removed = 0
        # One first-level folder at a time: 1/256 of the keys in memory, not all of them.
        for prefix in await self.storage.object_prefixes():
            keys = await self.storage.objects_older_than(prefix, cutoff)
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                referenced = await referenced_keys(conn, chunk)  # a first look, without locks
                for key in chunk:
                    if key not in referenced and await self._remove(conn, key, cutoff):
                        removed += 1
        return removed

    async def _remove(self, conn: asyncpg.Connection, key: str, cutoff: float) -> bool:
        """Remove one object if, under its lock, still no row refers to it."""
        async with conn.transaction():
            await lock_objects(conn, [key.rsplit("/", 1)[1]])
            if await referenced_keys(conn, [key]):
                return False  # an ingest committed it since the first look
            removed = await self.storage.remove_orphan(key, cutoff)
        if removed:
            SWEPT.labels("object").inc()
            log.debug("orphaned object removed", key=key)
        return removed


async def sweep_once(settings: GatewaySettings, min_age: float | None) -> Swept:
    """One sweep, waiting for one in progress elsewhere to finish first."""
    storage = open_storage(settings, fsync=settings.storage_fsync)
    try:
        async with open_pool(settings, min_size=1, max_size=2) as pool:
            swept = await Sweeper(pool, storage, settings.sweep_min_age_seconds).sweep(
                min_age, wait=True
            )
    finally:
        await storage.close()
    assert swept is not None
    return swept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.sweep",
        description="Remove stored objects no row refers to, and stale temp files, once.",
    )
    parser.add_argument(
        "--min-age",
        type=float,
        default=None,
        metavar="SECONDS",
        help="remove only files older than this (default: SWEEP_MIN_AGE_SECONDS); 0 removes"
        " every orphan and temp file present when the sweep starts, temp files of uploads"
        " still arriving included (those uploads then fail with a 503)",
    )
    args = parser.parse_args(argv)
    if args.min_age is not None and args.min_age < 0:
        parser.error("--min-age must be 0 or more")
    settings = load_settings(GatewaySettings)
    configure_logging(settings, "sweep")
    uvloop.install()
    swept = asyncio.run(sweep_once(settings, args.min_age))
    print(f"removed {swept.objects} orphaned objects and {swept.temp} temp files")


if __name__ == "__main__":
    main()
