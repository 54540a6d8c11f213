"""The storage sweeper: orphans and stale temp files go, nothing an ingest relies on does."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from common.storage import key_for
from common.storage.filesystem import FileSystemStorage
from gateway.repo import lock_objects
from gateway.settings import GatewaySettings
from gateway.sweep import Sweeper
from tests.conftest import BusNames, make_jpeg, service_env
from tests.integration.conftest import Gateway
from tests.integration.test_ingest import form

HOUR = 3600.0


def swept(kind: str) -> float:
    return REGISTRY.get_sample_value("storage_swept_total", {"kind": kind}) or 0.0


def store(storage_path: Path, data: bytes, *, age: float = 0.0) -> Path:
    """Put bytes where ingest would have placed them, last modified `age` seconds ago."""
    path = storage_path / key_for(hashlib.sha256(data).hexdigest())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


async def add_content(conn: asyncpg.Connection, data: bytes, **columns: str) -> None:
    """A content row for these bytes, as ingest records it."""
    sha = hashlib.sha256(data).hexdigest()
    await conn.execute(
        """INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key,
                                thumbnail_key, first_job_id)
           VALUES ($1, $2, 'image', 'image/jpeg', $3, $4, $5, $6)""",
        uuid.uuid4(),
        sha,
        len(data),
        key_for(sha),
        columns.get("thumbnail_key"),
        uuid.uuid4(),
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of the sweeper's own (not the gateway's)."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        yield pool


async def test_sweep_removes_object_of_failed_commit_when_no_row_refers_to_it(
    start_gateway: Callable[..., Any],
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    storage_path: Path,
) -> None:
    kept, lost = make_jpeg(1), make_jpeg(2)
    async with start_gateway(sweep_interval_seconds=0) as gateway:
        ok = await gateway.client.post("/api/v1/ingest", data=form(("kept.jpg", kept)))
        assert ok.status == 202
        # The database refuses the next ingest's rows after its file was placed: a 500.
        await db.execute(
            """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql
               AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
               CREATE TRIGGER refuse BEFORE INSERT ON jobs
               FOR EACH ROW EXECUTE FUNCTION refuse()"""
        )
        failed = await gateway.client.post("/api/v1/ingest", data=form(("lost.jpg", lost)))
        assert failed.status == 500
        await db.execute("DROP TRIGGER refuse ON jobs")
    orphan = storage_path / key_for(hashlib.sha256(lost).hexdigest())
    assert orphan.exists()
    assert await db.fetchval("SELECT count(*) FROM content") == 1
    # A thumbnail the embedder saved, and a cluster folder's link, are not orphans.
    thumbnail = store(storage_path, b"thumbnail bytes", age=2 * HOUR)
    thumbnail_key = key_for(hashlib.sha256(b"thumbnail bytes").hexdigest())
    await db.execute("UPDATE content SET thumbnail_key = $1", thumbnail_key)
    link = storage_path / "media/clusters/c1/kept.jpg"
    link.parent.mkdir(parents=True)
    link.symlink_to(
        os.path.relpath(storage_path / key_for(hashlib.sha256(kept).hexdigest()), link.parent)
    )
    before = swept("object")

    result = await Sweeper(pool, FileSystemStorage(storage_path), HOUR).sweep(0)

    assert result is not None and result.objects == 1
    assert swept("object") == before + 1
    assert not orphan.exists()
    assert (storage_path / key_for(hashlib.sha256(kept).hexdigest())).read_bytes() == kept
    assert thumbnail.exists()
    assert link.is_symlink() and link.read_bytes() == kept
    assert await db.fetchval("SELECT count(*) FROM content") == 1


async def test_sweep_removes_files_older_than_the_bound_when_fresh_ones_stay(
    pool: asyncpg.Pool,
    storage_path: Path,
) -> None:
    storage = FileSystemStorage(storage_path)
    old_part, new_part = storage_path / "tmp/old.part", storage_path / "tmp/new.part"
    old_part.write_bytes(b"left by a gateway killed mid-upload")
    new_part.write_bytes(b"an upload still arriving")
    age(old_part, 2 * HOUR)
    old_orphan = store(storage_path, b"old orphan", age=2 * HOUR)
    new_orphan = store(storage_path, b"just placed, its row not committed yet")
    before_temp, before_objects = swept("temp"), swept("object")

    result = await Sweeper(pool, storage, HOUR).sweep()

    assert result is not None and (result.objects, result.temp) == (1, 1)
    assert (swept("object"), swept("temp")) == (before_objects + 1, before_temp + 1)
    assert not old_part.exists() and new_part.exists()
    assert not old_orphan.exists() and new_orphan.exists()
    assert await storage.temp_files() == ["new.part"]


async def test_ingest_keeps_its_object_when_sweeper_removes_it_before_the_rows_commit(
    start_gateway: Callable[..., Any],
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    storage_path: Path,
) -> None:
    # The bytes were stored by an ingest that failed long ago: an orphan, which a new upload
    # of the same bytes relies on (it keeps the stored copy). The sweeper removes it between
    # the new upload's placing and its transaction (held up here waiting for a connection).
    image = make_jpeg(3)
    orphan = store(storage_path, image, age=2 * HOUR)
    async with start_gateway(db_pool_size=1, db_max_overflow=0, sweep_interval_seconds=0) as gw:
        held = await gw.deps.pool.acquire()
        try:
            upload = asyncio.create_task(
                gw.client.post("/api/v1/ingest", data=form(("again.jpg", image)))
            )
            for _ in range(200):  # placed: the stored copy's mtime is refreshed
                if orphan.stat().st_mtime > time.time() - 60:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the upload never placed its file")
            sweeper = Sweeper(pool, FileSystemStorage(storage_path), HOUR)
            result = await sweeper.sweep(0, temp_min_age=HOUR)  # the upload's temp file stays
            assert result is not None and result.objects == 1
            assert not orphan.exists()
            assert not upload.done()
        finally:
            await gw.deps.pool.release(held)
        response = await upload
        assert response.status == 202, await response.text()
    assert orphan.read_bytes() == image
    assert await db.fetchval(
        "SELECT storage_key FROM content WHERE sha256 = $1", hashlib.sha256(image).hexdigest()
    ) == key_for(hashlib.sha256(image).hexdigest())
    assert await FileSystemStorage(storage_path).temp_files() == []


async def test_ingest_waits_for_the_objects_lock_when_a_sweeper_holds_it(
    gateway: Gateway,
    db: asyncpg.Connection,
    storage_path: Path,
) -> None:
    # A sweeper has found the orphan without a row and holds its lock (the test does, here)
    # when an upload of the same bytes arrives; it removes the file, then lets go.
    image = make_jpeg(5)
    sha = hashlib.sha256(image).hexdigest()
    orphan = store(storage_path, image, age=2 * HOUR)
    async with db.transaction():
        await lock_objects(db, [sha])
        upload = asyncio.create_task(
            gateway.client.post("/api/v1/ingest", data=form(("again.jpg", image)))
        )
        for _ in range(200):
            if upload.done() or await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ):
                break
            await asyncio.sleep(0.02)
        assert await FileSystemStorage(storage_path).remove_orphan(key_for(sha), time.time() + 1)
    response = await upload
    assert response.status == 202, await response.text()
    assert orphan.read_bytes() == image
    assert await db.fetchval("SELECT count(*) FROM content WHERE sha256 = $1", sha) == 1


async def test_sweep_keeps_object_when_its_row_commits_while_sweeper_waits_for_lock(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    storage_path: Path,
) -> None:
    image = make_jpeg(4)
    orphan = store(storage_path, image, age=2 * HOUR)
    sweeper = Sweeper(pool, FileSystemStorage(storage_path), HOUR)
    async with db.transaction():  # an ingest holding the object's lock, about to commit
        await lock_objects(db, [hashlib.sha256(image).hexdigest()])
        sweep = asyncio.create_task(sweeper.sweep(0))
        for _ in range(200):
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the sweeper never waited for the object's lock")
        await add_content(db, image)
    result = await sweep
    assert result is not None and result.objects == 0
    assert orphan.read_bytes() == image


async def test_sweep_runs_in_the_gateway_one_at_a_time(
    start_gateway: Callable[..., Any],
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    storage_path: Path,
) -> None:
    settings = {
        "sweep_interval_seconds": 0.1,
        "sweep_min_age_seconds": 1,
        "upload_timeout_seconds": 1,
    }
    async with start_gateway(**settings):
        orphan = store(storage_path, b"an orphan", age=2 * HOUR)
        for _ in range(100):
            if not orphan.exists():
                break
            await asyncio.sleep(0.05)
        assert not orphan.exists()
    # While another process sweeps (holds the sweeper's lock), a sweep skips its turn.
    sweeper = Sweeper(pool, FileSystemStorage(storage_path), HOUR)
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(hashtextextended('mammothbox.sweeper', 0))")
        assert await sweeper.sweep() is None
    assert await sweeper.sweep() is not None


def test_sweep_command_removes_everything_orphaned_when_min_age_is_0(
    database_url: str,
    bus_names: BusNames,
    storage_path: Path,
) -> None:
    FileSystemStorage(storage_path)
    orphan = store(storage_path, b"an orphan placed a moment ago")
    (storage_path / "tmp/x.part").write_bytes(b"a temp file")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.sweep", "--min-age", "0"],
        env=service_env(database_url, bus_names, storage_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "removed 1 orphaned objects and 1 temp files" in done.stdout
    assert not orphan.exists()
    assert list((storage_path / "tmp").iterdir()) == []


def test_settings_refuse_a_sweep_age_below_the_upload_timeout() -> None:
    with pytest.raises(ValidationError, match="SWEEP_MIN_AGE_SECONDS must be at least"):
        GatewaySettings(sweep_min_age_seconds=60, upload_timeout_seconds=120)
