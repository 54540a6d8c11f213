"""DecoderPool: real worker processes; a bad, crashing or stuck item fails only itself."""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from embedder.decode import Decoded, DecodedVideo, DecodeError, decode_image
from embedder.decoder_pool import DecoderPool, PoolClosed
from embedder.manifest import Preprocess

MiB = 2**20
CLIP = Preprocess(
    image_size=224, resize_to=224,
    mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
)  # fmt: skip


# Run in the workers through DecoderPool._run: module-level, so they pickle by name.
def sleep_for(seconds: float) -> None:
    time.sleep(seconds)


def exit_hard(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def allocate(nbytes: int) -> int:
    return int(np.ones(nbytes, dtype=np.uint8).sum())


def pid() -> int:
    return os.getpid()


def sleep_and_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def alive(process_id: int) -> bool:
    try:
        os.kill(process_id, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def images() -> ModuleType:
    # Imported here, not at the top: workers import this module to run the functions above,
    # and test_images pulls in transformers, which would eat into the items' time limits.
    from tests.embedder import test_images

    return test_images


@pytest.fixture
def photos(images: ModuleType, tmp_path: Path) -> list[str]:
    return [
        images.write(tmp_path, f"{name}.jpg", images.jpeg_bytes(images.photo(name)))
        for name in images.PHOTOS
    ]


@pytest.fixture
async def pool() -> AsyncIterator[DecoderPool]:
    decoders = DecoderPool(CLIP, workers=2, memory_limit_bytes=512 * MiB, timeout_s=3.0)
    yield decoders
    await decoders.close()


async def decode_all(pool: DecoderPool, paths: list[str]) -> list[Decoded]:
    return await asyncio.gather(*(pool.decode(path, "image") for path in paths))


async def test_decoder_pool_decodes_images_like_decode_image_when_run_in_parallel(
    pool: DecoderPool, photos: list[str]
) -> None:
    started = time.monotonic()
    decoded = await decode_all(pool, photos * 2)
    elapsed = time.monotonic() - started
    assert len({id(d) for d in decoded}) == 8
    for path, result in zip(photos * 2, decoded, strict=True):
        expected = decode_image(path, CLIP)
        assert (result.width, result.height, result.phash) == (
            expected.width, expected.height, expected.phash,
        )  # fmt: skip
        np.testing.assert_array_equal(result.pixels, expected.pixels)
    worker_pids = set(await asyncio.gather(*(pool._run(sleep_and_pid, 0.3) for _ in range(4))))
    assert len(worker_pids) == 2 and elapsed < 30


async def test_decoder_pool_fails_only_bad_files_when_mixed_with_good_ones(
    pool: DecoderPool, photos: list[str], images: ModuleType, tmp_path: Path
) -> None:
    bad = {
        images.write(tmp_path, name, make()): message
        for name, (make, message) in images.BAD_IMAGES.items()
    }
    paths = [path for pair in zip(photos, list(bad)[:4], strict=True) for path in pair]
    paths += list(bad)[4:]
    results = await asyncio.gather(
        *(pool.decode(path, "image") for path in paths), return_exceptions=True
    )
    for path, result in zip(paths, results, strict=True):
        if path in bad:
            assert isinstance(result, DecodeError), (path, result)
            assert bad[path] in str(result)
        else:
            assert isinstance(result, Decoded), (path, result)


async def test_decoder_pool_fails_only_the_runaway_when_an_item_times_out(
    photos: list[str],
) -> None:
    pool = DecoderPool(CLIP, workers=2, memory_limit_bytes=512 * MiB, timeout_s=2.0)
    try:
        before = set(await asyncio.gather(*(pool._run(sleep_and_pid, 0.3) for _ in range(2))))
        started = time.monotonic()
        stuck, *good = await asyncio.gather(
            pool._run(sleep_for, 60.0), *(pool.decode(path, "image") for path in photos),
            return_exceptions=True,
        )  # fmt: skip
        assert isinstance(stuck, DecodeError) and str(stuck) == "decoding took longer than 2s"
        assert time.monotonic() - started < 10
        assert all(isinstance(result, Decoded) for result in good), good
        assert isinstance(await pool.decode(photos[0], "image"), Decoded)  # still serving
        after = set(await asyncio.gather(*(pool._run(sleep_and_pid, 0.3) for _ in range(2))))
        assert len(before) == len(after) == 2
        assert len(before & after) == 1  # one worker lived on, the stuck one was replaced...
        assert [alive(p) for p in before].count(False) == 1  # ...after being killed
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("crash", "args", "message"),
    [(exit_hard, (3,), "decoder crashed (exit code 3)"), (segfault, (), "killed by SIGSEGV")],
)
async def test_decoder_pool_fails_only_the_crashed_item_when_a_worker_dies(
    pool: DecoderPool, photos: list[str], crash: Callable[..., Any], args: tuple[Any, ...],
    message: str,
) -> None:  # fmt: skip
    crashed, *good = await asyncio.gather(
        pool._run(crash, *args), *(pool.decode(path, "image") for path in photos * 2),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(crashed, DecodeError) and message in str(crashed), crashed
    assert all(isinstance(result, Decoded) for result in good), good
    assert isinstance(await pool.decode(photos[1], "image"), Decoded)


async def test_decoder_pool_reports_out_of_memory_when_worker_exceeds_its_limit() -> None:
    pool = DecoderPool(CLIP, workers=1, memory_limit_bytes=256 * MiB, timeout_s=10.0)
    try:
        before = await pool._run(pid)
        with pytest.raises(DecodeError, match="out of memory"):
            await pool._run(allocate, 1024 * MiB)
        assert await pool._run(allocate, 64 * MiB) == 64 * MiB  # within the limit: fine
        assert await pool._run(pid) == before  # the worker survived its MemoryError
    finally:
        await pool.close()


async def test_decoder_pool_decodes_video_when_kind_is_video(
    pool: DecoderPool, images: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    images.make_video(path, gop=5)
    video = await pool.decode(str(path), "video")
    assert isinstance(video, DecodedVideo)
    assert (video.width, video.height, len(video.frames)) == (64, 48, 8)
    assert Image.open(io.BytesIO(video.thumbnail)).format == "JPEG"


async def test_decoder_pool_keeps_event_loop_responsive_when_decoding(
    pool: DecoderPool, photos: list[str]
) -> None:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await decode_all(pool, photos * 3)
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)
    assert len(gaps) > 10 and max(gaps) < 0.25, max(gaps)


async def test_decoder_pool_stops_workers_and_refuses_work_when_closed(
    photos: list[str],
) -> None:
    pool = DecoderPool(CLIP, workers=2, memory_limit_bytes=512 * MiB, timeout_s=30.0)
    worker_pids = set(await asyncio.gather(*(pool._run(sleep_and_pid, 0.3) for _ in range(2))))
    running = asyncio.create_task(pool._run(sleep_for, 60.0))
    await asyncio.sleep(0.5)
    await pool.close()
    with pytest.raises(PoolClosed):
        await running
    with pytest.raises(PoolClosed):
        await pool.decode(photos[0], "image")
    assert not any(alive(p) for p in worker_pids)


async def test_decoder_pool_replaces_worker_when_it_died_while_idle(photos: list[str]) -> None:
    pool = DecoderPool(CLIP, workers=1, memory_limit_bytes=512 * MiB, timeout_s=30.0)
    try:
        first = await pool._run(pid)
        os.kill(first, signal.SIGKILL)  # as the OOM killer might, between items
        assert isinstance(await pool.decode(photos[0], "image"), Decoded)
        assert await pool._run(pid) != first
    finally:
        await pool.close()


async def test_decoder_pool_fails_with_pool_closed_when_items_wait_for_a_slot_at_close(
    photos: list[str],
) -> None:
    pool = DecoderPool(CLIP, workers=1, memory_limit_bytes=512 * MiB, timeout_s=30.0)
    await pool._run(pid)
    items = [asyncio.create_task(pool._run(sleep_for, 60.0)) for _ in range(3)]
    await asyncio.sleep(0.3)
    await pool.close()
    results = await asyncio.gather(*items, return_exceptions=True)
    assert all(isinstance(result, PoolClosed) for result in results), results


async def test_decoder_pool_keeps_worker_when_call_cannot_be_pickled() -> None:
    pool = DecoderPool(CLIP, workers=1, memory_limit_bytes=512 * MiB, timeout_s=30.0)
    try:
        before = await pool._run(pid)
        with pytest.raises((AttributeError, pickle.PicklingError), match="pickle"):
            await pool._run(lambda: None)  # a lambda pickles by name, which it lacks
        assert await pool._run(pid) == before
    finally:
        await pool.close()


async def test_decoder_pool_starts_every_worker_up_front_when_started(
    photos: list[str],
) -> None:
    pool = DecoderPool(CLIP, workers=2, memory_limit_bytes=512 * MiB, timeout_s=30.0)
    try:
        assert pool.alive == 0  # lazily started until asked
        await pool.start()
        assert pool.alive == 2
        started = {worker.process.pid for worker in pool._live}
        # Both slots busy at once: the items run on the workers started up front.
        used = set(await asyncio.gather(*(pool._run(sleep_and_pid, 0.3) for _ in range(2))))
        assert used == started
        assert isinstance(await pool.decode(photos[0], "image"), Decoded)
    finally:
        await pool.close()
    assert pool.alive == 0
