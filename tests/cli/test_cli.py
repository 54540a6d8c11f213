"""`mammoth`, run as people run it (a process, MAMMOTH_URL, MAMMOTH_API_KEY) against the real
gateway on loopback: ingest that survives a kill, a 503 and a dropped connection, and the
API's other calls by name."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg
import pytest
from mammoth_cli.plan import LocalFile, describe, idempotency_key, walk

from tests.conftest import make_jpeg
from tests.integration.conftest import Gateway
from tests.integration.test_uploads import answer, cut, start_upload
from tests.proxy import TcpProxy

KEYS = ["reader-key-0123456789:read", "writer-key-0123456789:write", "root-key-0123456789:admin"]


def url_of(gw: Gateway) -> str:
    return f"http://{gw.client.host}:{gw.client.port}"


async def mammoth(
    url: str, *args: str, key: str | None = None, timeout: float = 90, **env: str
) -> tuple[int, str, str]:
    """Run the command to its end: exit code, stdout, stderr."""
    process = await start(url, *args, key=key, **env)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def start(
    url: str, *args: str, key: str | None = None, **variables: str
) -> asyncio.subprocess.Process:
    env = {**os.environ, "MAMMOTH_URL": url, "COLUMNS": "200", **variables}
    env.pop("MAMMOTH_API_KEY", None)
    if key is not None:
        env["MAMMOTH_API_KEY"] = key
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mammoth_cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def photo_tree(root: Path, n: int) -> set[str]:
    """`n` distinct JPEGs in nested folders, with files and folders an ignore file leaves out;
    the names of the files that are to be sent."""
    root.mkdir(exist_ok=True)
    wanted = set()
    for i in range(n):
        folder = root / f"album{i % 4}" / ("raw" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"p{i:03}.jpg").write_bytes(make_jpeg(i, size=(32, 32)))
        wanted.add(f"p{i:03}.jpg")
    (root / "drafts").mkdir()
    (root / "drafts" / "d1.jpg").write_bytes(make_jpeg(1000))
    (root / "album0" / "notes.txt").write_text("not a photo")
    (root / "album1" / "x.jpg.tmp").write_bytes(b"partial")
    (root / "album2" / "skip-me.jpg").write_bytes(make_jpeg(1001))
    (root / ".mammothignore").write_text("# what is not ours\ndrafts/\n*.tmp\n")
    (root / "album2" / ".mammothignore").write_text("skip-*.jpg\n")
    return wanted


async def filenames(db: asyncpg.Connection) -> list[str]:
    return [r["filename"] for r in await db.fetch("SELECT filename FROM uploads ORDER BY 1")]


async def uploads_at_least(db: asyncpg.Connection, n: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM uploads") >= n)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_walk_follows_nested_ignore_files_and_the_type_filter(tmp_path: Path) -> None:
    wanted = photo_tree(tmp_path, 12)
    (tmp_path / "album3" / "keep.json").write_text("{}")
    found = walk([tmp_path])
    names = [p.name for p in found.files]
    assert set(names) == wanted | {"keep.json"} and len(names) == len(wanted) + 1
    assert found.files == sorted(found.files, key=lambda p: p.as_posix())
    # drafts/, x.jpg.tmp and album2's skip-me.jpg; notes.txt is another type.
    assert (found.ignored, found.other_types) == (3, 1)
    assert {p.name for p in walk([tmp_path], ["json"]).files} == {"keep.json"}
    everything = walk([tmp_path], use_ignore=False)
    assert {"d1.jpg", "skip-me.jpg"} <= {p.name for p in everything.files}


def test_idempotency_keys_follow_path_content_and_fields(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"one")
    (tmp_path / "b.jpg").write_bytes(b"one")
    a, b = describe(tmp_path / "a.jpg"), describe(tmp_path / "b.jpg")
    key = idempotency_key([a], {"owner": "x"})
    assert key == idempotency_key([describe(tmp_path / "a.jpg")], {"owner": "x"})
    assert key != idempotency_key([b], {"owner": "x"})  # same bytes, another path
    assert key != idempotency_key([a], {"owner": "y"})
    assert key != idempotency_key([LocalFile(a.path, 3, "0" * 64)], {"owner": "x"})
    assert len(key) <= 255 and key.isascii()


@pytest.mark.slow
async def test_an_ingest_killed_half_way_and_run_again_uploads_each_file_exactly_once(
    gateway: Gateway, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "photos"  # beside the gateway's storage, not around it
    wanted = photo_tree(tmp_path, 200)
    url = url_of(gateway)
    process = await start(url, "ingest", str(tmp_path), "--concurrency", "2")
    await until(lambda: uploads_at_least(db, 60))
    assert process.returncode is None, await process.communicate()
    process.send_signal(signal.SIGKILL)
    await process.wait()
    before = await db.fetchval("SELECT count(*) FROM uploads")
    assert 60 <= before < 200

    code, stdout, stderr = await mammoth(url, "ingest", str(tmp_path), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["found"] == 200 and summary["failed"] == [] and summary["not_sent"] == 0
    assert summary["already_uploaded"] == before and summary["uploaded"] == 200 - before
    assert (summary["ignored"], summary["other_types"]) == (3, 1)
    assert await filenames(db) == sorted(wanted)  # each once
    # A third run finds everything there.
    code, stdout, _ = await mammoth(url, "ingest", str(tmp_path))
    assert code == 0 and "200 files: 0 uploaded, 200 already uploaded, 0 failed" in stdout
    assert await db.fetchval("SELECT count(*) FROM uploads") == 200
    job = summary["jobs"][0]["job_id"]
    code, stdout, _ = await mammoth(url, "status", job, "--json")
    assert code == 0 and json.loads(stdout)["job_id"] == job


async def test_ingest_waits_out_a_503_with_retry_after(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]],
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    tmp_path = tmp_path / "photos"
    tmp_path.mkdir()
    (tmp_path / "a.jpg").write_bytes(make_jpeg(7))
    busy = cut("busy")
    async with start_gateway(
        max_concurrent_uploads=1, upload_idle_timeout_seconds=2, retry_after_seconds=1
    ) as gw:
        reader, writer = await start_upload(gw.client)  # holds the one slot for 2 s
        started = time.monotonic()
        code, stdout, stderr = await mammoth(url_of(gw), "ingest", str(tmp_path))
        assert code == 0, stderr
        assert "1 files: 1 uploaded" in stdout
        assert time.monotonic() - started > 1  # it waited
        assert cut("busy") > busy  # the gateway did answer 503
        assert (await answer(reader))[0] == 408
        writer.close()
    assert await filenames(db) == ["a.jpg"]


async def test_ingest_goes_on_after_the_connection_drops(
    gateway: Gateway, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "photos"
    tmp_path.mkdir()
    for i in range(40):
        (tmp_path / f"f{i:02}.jpg").write_bytes(make_jpeg(100 + i, size=(32, 32)))
    assert gateway.client.port is not None
    proxy = TcpProxy(gateway.client.host, gateway.client.port)
    await proxy.start()
    try:
        process = await start(f"http://127.0.0.1:{proxy.port}", "ingest", str(tmp_path), "--json")
        await until(lambda: uploads_at_least(db, 10))
        await proxy.cut()
        await asyncio.sleep(1.5)
        await proxy.restore()
        stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
        assert process.returncode == 0, stderr.decode()
        summary = json.loads(stdout)
        assert summary["uploaded"] + summary["already_uploaded"] == 40
    finally:
        await proxy.close()
    assert await filenames(db) == [f"f{i:02}.jpg" for i in range(40)]


async def test_bad_arguments_are_a_usage_error_with_exit_2(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    for args in [
        ["ingest"],
        ["ingest", str(tmp_path / "missing")],
        ["ingest", str(tmp_path), "--type", "audio"],
        ["ingest", str(tmp_path), "--concurrency", "0"],
        ["search"],
        ["search", "cats", "--like", "x"],
        ["dlq", "requeue"],
        ["clusters", "rename", "only-an-id"],
        ["no-such-command"],
    ]:
        code, _, stderr = await mammoth(url, *args)
        assert code == 2, (args, stderr)
        assert "Usage" in stderr or "Error" in stderr, (args, stderr)


async def test_the_other_commands_speak_the_api_and_say_what_went_wrong(
    start_gateway: Callable[..., AbstractAsyncContextManager[Gateway]], tmp_path: Path
) -> None:
    tmp_path = tmp_path / "photos"
    tmp_path.mkdir()
    (tmp_path / "a.jpg").write_bytes(make_jpeg(3))
    async with start_gateway(api_keys=KEYS) as gw:
        url = url_of(gw)
        reader, writer, root = (k.split(":")[0] for k in KEYS)
        code, stdout, stderr = await mammoth(url, "ingest", str(tmp_path), "--json", key=writer)
        assert code == 0, stderr
        job = json.loads(stdout)["jobs"][0]["job_id"]
        code, stdout, _ = await mammoth(url, "timeline", job, key=reader)
        assert code == 0 and "ingest" in stdout
        code, stdout, _ = await mammoth(url, "timeline", job, "--json", key=reader)
        assert code == 0 and json.loads(stdout)["job_id"] == job
        code, stdout, _ = await mammoth(url, "status", job, key=reader)
        assert code == 0 and f"job {job}" in stdout
        for args, key in [
            (["clusters", "list", "--json"], reader),
            (["schemas", "list", "--json"], reader),
            (["dlq", "list", "--json"], root),
        ]:
            code, stdout, stderr = await mammoth(url, *args, key=key)
            assert code == 0, (args, stderr)
            json.loads(stdout)
        code, stdout, _ = await mammoth(url, "dlq", "purge", "--all", key=root)
        assert code == 0 and "purged 0" in stdout
        # Refused: 4; a bad id: 1 with the gateway's words.
        code, _, stderr = await mammoth(url, "dlq", "list", key=reader)
        assert code == 4 and "403" in stderr
        code, _, stderr = await mammoth(url, "status", job, key="wrong-key-0123456789")
        assert code == 4 and "401" in stderr
        code, _, stderr = await mammoth(url, "status", "not-a-job", key=reader)
        assert code == 1 and "400" in stderr and "UUID" in stderr
        code, _, stderr = await mammoth(url, "ingest", str(tmp_path), key=reader)
        assert code == 4 and "403" in stderr
        code, stdout, _ = await mammoth(url, "health", "--json", key=reader)
        assert json.loads(stdout)["status"] in ("healthy", "degraded", "unhealthy")
    # Nobody there: 3, quickly, with a sentence.
    code, stdout, _ = await mammoth(
        "http://127.0.0.1:9", "ingest", str(tmp_path), "--retry-for", "0.5"
    )
    assert code == 3 and "stopped: no answer from http://127.0.0.1:9" in stdout
    code, _, stderr = await mammoth(
        "http://127.0.0.1:9", "clusters", "list", key=reader, MAMMOTH_RETRY_FOR="0.5"
    )
    assert code == 3 and "no answer from" in stderr


async def test_on_a_terminal_ingest_shows_files_in_flight_and_the_whole_with_its_rate(
    gateway: Gateway, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "photos"
    tmp_path.mkdir()
    for i in range(30):
        (tmp_path / f"t{i:02}.jpg").write_bytes(make_jpeg(300 + i, size=(64, 64)))
    leader, follower = pty.openpty()
    env = {**os.environ, "MAMMOTH_URL": url_of(gateway), "TERM": "xterm", "COLUMNS": "120"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mammoth_cli", "ingest", str(tmp_path), "--concurrency", "1",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    screen = bytearray()

    def read_terminal() -> None:  # all along: a full terminal would stop the command
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command's end is closed
                return
            if not chunk:
                return
            screen.extend(chunk)

    reading = asyncio.create_task(asyncio.to_thread(read_terminal))
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    await asyncio.wait_for(reading, 10)
    os.close(leader)
    assert process.returncode == 0
    shown = bytes(screen).decode(errors="replace")
    assert "all files" in shown and "t0" in shown and "/s" in shown, shown[-2000:]
    assert "30 files: 30 uploaded" in stdout.decode()
