#!/usr/bin/env python3
"""`mammoth ingest` against the gateway's own ceiling, in one run on one gateway.

Starts a gateway on a fresh deployment (bench/ingest.py's), writes --files distinct small
JPEGs into a folder, then measures in turn, --rounds times (so the machine's drift hits both
alike):
  1. the ceiling: bench/ingest.py's closed-loop clients, --concurrency of them, one file per
     request (the CLI's default batch), from memory, for as many uploads as the folder holds;
  2. `mammoth ingest FOLDER --concurrency N --json` as a process: its files/s from its own
     summary (walk done; hashing, reading and uploading timed) and from the wall clock (the
     process start-up too).
Prints each and the ratio. Target: the CLI at least 80 % of the ceiling.

    .venv/bin/python bench/cli_ingest.py
    .venv/bin/python bench/cli_ingest.py --files 500 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import base_jpegs, bench_deployment, distinct, gateway_process, run_level


async def ceiling(url: str, concurrency: int, uploads: int, bases: list[bytes]) -> float:
    """Uploads/s of closed-loop in-memory clients, timed over about `uploads` uploads."""
    counter = [10_000_000]
    probe, _, _ = await run_level(url, concurrency, 1.0, bases, counter)
    seconds = max(uploads / max(probe, 1), 1.0)
    done, _, errors = await run_level(url, concurrency, seconds, bases, counter)
    assert errors == 0, f"{errors} uploads refused"
    return done / seconds


async def cli(url: str, folder: Path, concurrency: int) -> tuple[float, float]:
    """(files/s by the CLI's summary, files/s by the wall clock) of one `mammoth ingest`."""
    env = {**os.environ, "MAMMOTH_URL": url}
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mammoth_cli", "ingest", str(folder), "--json",
        "--concurrency", str(concurrency), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    wall = time.perf_counter() - started
    assert process.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    assert summary["uploaded"] == summary["found"], summary
    return summary["files_per_second"], summary["found"] / wall


async def run(files: int, concurrency: int, rounds: int, size: int) -> None:
    bases = base_jpegs(8, target=size, side=80)
    print(
        f"{files} files of {statistics.mean(len(b) for b in bases) / 1000:.0f} kB,"
        f" concurrency {concurrency}, one file per request, cores: {os.cpu_count()}"
    )
    ratios = []
    async with bench_deployment() as env, gateway_process(env) as (url, _):
        await run_level(url, concurrency, 2.0, bases, [20_000_000])  # warm up
        for round_ in range(rounds):
            with tempfile.TemporaryDirectory(prefix="mb-bench-cli-") as tmp:
                folder = Path(tmp)
                for i in range(files):
                    name = folder / f"d{i % 20:02}" / f"p{i:05}.jpg"
                    name.parent.mkdir(exist_ok=True)
                    name.write_bytes(distinct(bases[i % len(bases)], round_ * files + i))
                top = await ceiling(url, concurrency, files, bases)
                by_summary, by_wall = await cli(url, folder, concurrency)
            ratios.append(by_summary / top)
            print(
                f"round {round_ + 1}: gateway ceiling {top:7.1f} uploads/s;"
                f" mammoth ingest {by_summary:7.1f} files/s ({by_wall:.1f} by the wall clock"
                f" with start-up): {by_summary / top:.0%} of the ceiling",
                flush=True,
            )
    print(f"median: {statistics.median(ratios):.0%} of the ceiling (target 80 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=10_000, help="bytes per JPEG, at least")
    args = parser.parse_args()
    asyncio.run(run(args.files, args.concurrency, args.rounds, args.size))


if __name__ == "__main__":
    main()
