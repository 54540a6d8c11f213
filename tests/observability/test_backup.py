"""Backup and restore of a running system: a backup taken while uploads continue, restored into
a fresh database and store, brings back every upload acknowledged before the snapshot, done
and searchable, and nothing half-present (gateway/backup.py, scripts/backup.py, restore.py,
verify_store.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway.backup import BackupError, create, read_manifest, verify
from gateway.settings import GatewaySettings
from tests.observability.conftest import finished, own_system
from tests.observability.harness import ROOT, System, get_json, wait_until
from tests.observability.test_shutdown import Load


def supervisorctl(system: System, *args: str) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "supervisorctl"), "-c",
         str(system.run_dir / "supervisord.conf"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def settings_of(system: System) -> GatewaySettings:
    return GatewaySettings(
        database_url=system.database_url, storage_path=Path(system.env["STORAGE_PATH"])
    )


async def fetch(system: System, sql: str) -> list[asyncpg.Record]:
    """Rows of one query on the system's database."""
    conn = await asyncpg.connect(system.database_url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def image_uploads(system: System) -> list[str]:
    rows = await fetch(
        system,
        """SELECT u.id::text FROM uploads u JOIN content c ON c.id = u.content_id
           WHERE c.kind = 'image' ORDER BY u.created_at""",
    )
    return [row["id"] for row in rows]


async def all_analyzed(system: System) -> bool:
    """Whether every image of the system has its analysis."""
    sql = "SELECT count(*) AS n FROM content WHERE kind = 'image' AND analyzed_at IS NULL"
    return bool((await fetch(system, sql))[0]["n"] == 0)


async def uploads_of(system: System) -> dict[str, str]:
    """Every upload (id -> its job) in the system's database."""
    rows = await fetch(system, "SELECT id::text, job_id::text FROM uploads")
    return {row["id"]: row["job_id"] for row in rows}


@pytest.mark.timeout(420)
async def test_a_backup_taken_under_load_restores_every_acknowledged_upload(
    tmp_path: Path, colour_models: Path
) -> None:
    backups = tmp_path / "backups"
    async with own_system(tmp_path / "a", colour_models) as source:
        load = Load(source)
        running = asyncio.create_task(load.run())
        await wait_until(lambda: len(load.jobs) >= 4, timeout=60, what="uploads before")
        # Work on its way at the snapshot, for certain: with the analyzer stopped, the next
        # images are clustered without their analysis; with the embedder and the schemer
        # stopped too, the next uploads are acknowledged and their events wait in the
        # broker, which a backup does not hold.
        supervisorctl(source, "stop", "analyzer")
        unanalyzed_from = len(load.jobs)
        await wait_until(
            lambda: len(load.jobs) >= unanalyzed_from + 4, timeout=60, what="unanalyzed"
        )
        supervisorctl(source, "stop", "embedder", "schemer")
        stuck_from = len(load.jobs)
        await wait_until(lambda: len(load.jobs) >= stuck_from + 6, timeout=60, what="stuck")
        acknowledged = list(load.jobs)  # each one answered 202 before the snapshot
        backup, manifest = await create(settings_of(source), backups)
        await wait_until(
            lambda: len(load.jobs) >= len(acknowledged) + 6, timeout=60, what="uploads after"
        )
        load.stop()
        await running
        later = load.jobs[len(acknowledged) :]
        assert manifest.rows["uploads"] >= len(acknowledged)
        assert manifest.objects > 0 and (backup / "database.dump").stat().st_size > 0
        # A restore refuses a database that is not empty (this one), and a folder that is
        # not a complete backup.
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts/restore.py"), str(backup)],
            env=source.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2 and "the database is not empty" in done.stderr
        with pytest.raises(BackupError, match="not a complete backup"):
            read_manifest(tmp_path)
    assert [p.name for p in backups.iterdir()] == [backup.name]  # no partial folder left

    async with own_system(tmp_path / "b", colour_models, restore=backup) as restored:
        assert restored.restored["restored"]["rows"] == manifest.rows
        resumed = restored.restored["resumed"]
        assert resumed["media"] >= 7 and resumed["json_jobs"] >= 1, resumed
        assert resumed["folders"] >= 1, resumed
        async with aiohttp.ClientSession() as session:
            for job in acknowledged:
                status = await finished(session, restored.base, job)
                assert status["status"] == "done", status
            # Exactly what the snapshot held: the uploads of the backup, none of the later
            # ones (a request answered during the snapshot may be either), each one done.
            in_b = await uploads_of(restored)
            assert len(in_b) == manifest.rows["uploads"]
            assert set(acknowledged) <= set(in_b.values())
            assert not set(later[1:]) & set(in_b.values())
            for job in set(in_b.values()):
                assert (await finished(session, restored.base, job))["status"] == "done", job
            # ... and analyzed: none was left without its tags.
            await wait_until(
                lambda: all_analyzed(restored), timeout=60, what="every image analyzed"
            )
            # Searchable: a restored image finds the restored images alike, with a cluster.
            images = await image_uploads(restored)
            some_image = next(u for u in images if in_b[u] in acknowledged)
            hits = await get_json(
                session,
                f"{restored.base}/api/v1/search",
                params={"like": some_image, "threshold": "0"},
            )
            assert hits["results"], hits
            assert all(h["cluster"] for h in hits["results"])
        # A restore cut off after its dump was loaded is finished with --continue: run again
        # over the finished one, every later step is idempotent (nothing doubles).
        again = subprocess.run(
            [sys.executable, str(ROOT / "scripts/restore.py"), "--continue", str(backup)],
            env=restored.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert len(await uploads_of(restored)) == manifest.rows["uploads"]
        async with aiohttp.ClientSession() as session:
            for job in set(in_b.values()):
                assert (await finished(session, restored.base, job))["status"] == "done", job
        # The store and the database agree: every row has its bytes, no object without a row.
        report = await verify(settings_of(restored))
        assert report.rows_without_bytes == [] and report.objects_without_rows == []
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts/verify_store.py")],
            env=restored.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and json.loads(done.stdout)["consistent"], done.stderr
        await verify_finds_what_is_wrong(restored, tmp_path / "more-backups")


async def verify_finds_what_is_wrong(system: System, backups: Path) -> None:
    """verify names a row without bytes and an object without a row; backup refuses."""
    settings = settings_of(system)
    clean = await verify(settings)
    assert clean.consistent and clean.objects_without_rows == []
    # One object lost from the disk, one left by a failed upload.
    (row,) = await fetch(
        system, "SELECT storage_key FROM content WHERE kind = 'image' ORDER BY id LIMIT 1"
    )
    lost = row["storage_key"]
    (settings.storage_path / lost).unlink()
    orphan_sha = "ab" * 32
    orphan = settings.storage_path / "objects/ab/ab" / orphan_sha
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left behind")
    report = await verify(settings)
    assert report.rows_without_bytes == [lost]
    assert report.objects_without_rows == [f"objects/ab/ab/{orphan_sha}"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/verify_store.py")],
        env=system.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and json.loads(done.stdout)["rows_without_bytes"] == [lost]
    # A backup refuses to go on without the bytes a row needs, and leaves nothing.
    with pytest.raises(BackupError, match="missing from the store"):
        await create(settings, backups)
    assert list(backups.iterdir()) == []
