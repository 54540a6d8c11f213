"""The five services as processes on S3: uploads end clustered, no content on local disks.

A real S3-API server (moto) holds the content; each service has a STORAGE_PATH that must
stay empty and a scratch folder (STORAGE_SCRATCH_DIR) that must be empty after each item.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import av
import numpy as np
import pytest
import pytest_asyncio

from common.storage import Storage, key_for
from common.storage.s3 import S3Storage
from tests.clusterer.conftest import colour_models, colour_png  # noqa: F401
from tests.observability.conftest import finished, ingest, own_system
from tests.observability.harness import ROOT, System, wait_until
from tests.s3server import BUCKET, S3Server

pytestmark = pytest.mark.slow
MiB = 1024 * 1024


def big_video(path: Path, megabytes: int, rgb: tuple[int, int, int]) -> Path:
    """An uncompressed AVI of about `megabytes` (640x480 frames at 10 fps, mostly `rgb`)."""
    width, height = 640, 480
    frames = megabytes * MiB // (width * height * 3) + 1
    rng = np.random.default_rng(7)
    base = np.clip(np.array(rgb) + rng.normal(0, 12, (height, width, 3)), 0, 255)
    pixels = base.astype(np.uint8)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(pixels, i * 3, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def s3_system(
    tmp_path_factory: pytest.TempPathFactory,
    s3: S3Server,
    colour_models: Path,  # noqa: F811
) -> AsyncIterator[System]:
    tmp = tmp_path_factory.mktemp("s3-system")
    env = {
        **s3.env(),
        "STORAGE_PATH": str(tmp / "storage"),
        "STORAGE_SCRATCH_DIR": str(tmp / "scratch"),
        "MAX_VIDEO_BYTES": str(400 * MiB),
        "VIDEO_MAX_FRAMES": "4",
        "DECODE_TIMEOUT_S": "120",
    }
    async with own_system(tmp, colour_models, extra_env=env) as running:
        yield running


def bucket_of(system: System) -> Storage:
    """The system's bucket and prefix, through the port (as a service opens it)."""
    env = system.env
    return S3Storage(bucket=BUCKET, prefix=env["S3_PREFIX"], endpoint_url=env["S3_ENDPOINT_URL"])


async def stored_keys(storage: Storage) -> set[str]:
    keys: set[str] = set()
    for prefix in await storage.object_prefixes():
        keys.update(await storage.objects_older_than(prefix, float("inf")))
    return keys


def python(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=system.env, capture_output=True, text=True, timeout=300
    )


def local_content(system: System) -> list[str]:
    """What lies under STORAGE_PATH or in the scratch folder (with S3: nothing, ever)."""
    found = []
    for variable in ("STORAGE_PATH", "STORAGE_SCRATCH_DIR"):
        root = Path(system.env[variable])
        if root.exists():
            found += [str(p) for p in root.rglob("*") if p.is_file()]
    return found


async def clustered(system: System, job: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(system.database_url)
    try:
        return list(
            await conn.fetch(
                """SELECT c.sha256, c.storage_key, c.stage, c.cluster_id
                   FROM uploads u JOIN content c ON c.id = u.content_id
                   WHERE u.job_id = $1::uuid ORDER BY u.position""",
                job,
            )
        )
    finally:
        await conn.close()


async def test_one_and_five_images_and_a_200_mb_video_end_clustered_on_s3(
    s3_system: System, tmp_path: Path
) -> None:
    base = s3_system.base
    video = big_video(tmp_path / "big.avi", 200, (200, 30, 30))
    assert video.stat().st_size >= 200 * MiB
    batches = [
        [("one.png", colour_png((30, 200, 30), 1), "image/png")],
        [(f"five{i}.png", colour_png((30, 30, 200), 10 + i), "image/png") for i in range(5)],
    ]
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for files in batches:
            form = aiohttp.FormData()
            for name, data, mime in files:
                form.add_field("files[]", data, filename=name, content_type=mime)
            async with session.post(f"{base}/api/v1/ingest", data=form) as response:
                assert response.status == 202, await response.text()
                job = (await response.json())["job_id"]
            status = await finished(session, base, job)
            assert status["status"] == "done", status
            rows = await clustered(s3_system, job)
            assert len(rows) == len(files)
            assert all(r["stage"] == "clustered" and r["cluster_id"] for r in rows), rows
            assert local_content(s3_system) == []  # after each item: nothing kept locally
        with video.open("rb") as stream:
            job = await ingest(session, base, file=("big.avi", stream, "video/x-msvideo"))
        status = await finished(session, base, job)
        assert status["status"] == "done", status
        [row] = await clustered(s3_system, job)
        assert row["stage"] == "clustered" and row["cluster_id"] is not None
        assert local_content(s3_system) == []
        # The bytes are in the bucket, whole: read back through the API.
        upload = status["uploads"][0]["system_id"]
        digest = hashlib.sha256()
        async with session.get(f"{base}/api/v1/objects/{upload}/content") as answer:
            assert answer.status == 200
            async for chunk in answer.content.iter_chunked(MiB):
                digest.update(chunk)
        assert digest.hexdigest() == row["sha256"]
        clusters = await (await session.get(f"{base}/api/v1/clusters")).json()
        assert sum(c["member_count"] for c in clusters["clusters"]) >= 7
        health = await (await session.get(f"{base}/health")).json()
        assert health["storage"]["backend"] == "s3" and health["storage"]["status"] == "ok"


async def test_deleted_content_leaves_the_bucket_and_the_store_checks_out_on_s3(
    s3_system: System,
    s3: S3Server,
    colour_models: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    base = s3_system.base
    bucket = bucket_of(s3_system)
    images = [colour_png((200, 200, 30), 40 + i) for i in range(3)]
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        for i, data in enumerate(images):
            form.add_field("files[]", data, filename=f"gone{i}.png", content_type="image/png")
        async with session.post(f"{base}/api/v1/ingest", data=form) as response:
            job = (await response.json())["job_id"]
        assert (await finished(session, base, job))["status"] == "done"
        conn = await asyncpg.connect(s3_system.database_url)
        try:
            thumbnails = {
                r["thumbnail_key"]
                for r in await conn.fetch(
                    """SELECT c.thumbnail_key FROM uploads u JOIN content c
                       ON c.id = u.content_id WHERE u.job_id = $1::uuid""",
                    job,
                )
            }
        finally:
            await conn.close()
        contents = {key_for(hashlib.sha256(d).hexdigest()) for d in images}
        assert contents | thumbnails <= await stored_keys(bucket)
        async with session.delete(f"{base}/api/v1/ingest/{job}") as response:
            assert response.status == 200, await response.text()

    async def purged() -> bool:
        return not (contents | thumbnails) & await stored_keys(bucket)

    await wait_until(purged, timeout=60, what="the purge of the deleted content")
    # Nothing orphaned or half-written is left: the sweep finds nothing to remove, every
    # row has its bytes, every object its row, no temp object or multipart upload is open.
    swept = python(s3_system, "-m", "gateway.sweep", "--min-age", "0")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert "removed 0 orphaned objects and 0 temp files" in swept.stdout, swept.stdout
    verified = python(s3_system, str(ROOT / "scripts" / "verify_store.py"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout.splitlines()[-1])
    assert report["rows_without_bytes"] == report["objects_without_rows"] == [], report
    assert report["temp_files"] == 0
    # A backup copies the bucket's objects out, each checked against its hash ...
    backup = python(s3_system, str(ROOT / "scripts" / "backup.py"), str(tmp_path / "backups"))
    assert backup.returncode == 0, backup.stdout + backup.stderr
    manifest = json.loads(backup.stdout.splitlines()[-1])
    source_keys = await stored_keys(bucket)
    assert manifest["objects"] == len(source_keys)
    assert local_content(s3_system) == []
    await bucket.close()
    # ... and a restore puts them into another (empty) prefix, through the same port.
    env = {
        **s3.env(),
        "STORAGE_PATH": str(tmp_path / "b" / "storage"),
        "STORAGE_SCRATCH_DIR": str(tmp_path / "b" / "scratch"),
    }
    backup_dir = Path(manifest["path"])
    async with own_system(tmp_path / "b", colour_models, extra_env=env, restore=backup_dir) as b:
        restored = bucket_of(b)
        assert await stored_keys(restored) == source_keys
        async with aiohttp.ClientSession() as session:
            # One upload's bytes, read back through the restored gateway.
            conn = await asyncpg.connect(b.database_url)
            try:
                upload, sha = await conn.fetchrow(
                    """SELECT u.id, c.sha256 FROM uploads u JOIN content c
                       ON c.id = u.content_id WHERE c.kind = 'image' LIMIT 1"""
                )
            finally:
                await conn.close()
            async with session.get(f"{b.base}/api/v1/objects/{upload}/content") as answer:
                assert answer.status == 200
                assert hashlib.sha256(await answer.read()).hexdigest() == sha
        await restored.close()
