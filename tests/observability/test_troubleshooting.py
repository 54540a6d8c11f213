"""The troubleshooting guide's diagnostics run as typed against the running system.

Every fenced block of docs/troubleshooting.md written as ```bash runnable is run as one
`bash -euo pipefail` script from the repository root, with the services' environment, after
the workload (an image, a JSON document, the same image again and a dead-lettered truncated
PNG); each must exit 0. Plain ```bash blocks are illustrative and never run. The guide keeps
its eight sections (alert annotations in deploy/monitoring point at them) and the three
commands people type from memory, which must print what they promise.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from tests.observability.conftest import Workload
from tests.observability.harness import ROOT, System

DOC = ROOT / "docs" / "troubleshooting.md"
SECTIONS = (
    "Won't start",
    "Database",
    "Storage",
    "Workers and queues",
    "Performance",
    "VLM",
    "Monitoring",
    "Memory",
)
NUM_WORKERS = "curl http://localhost:8000/health | jq '.workers.num_workers'"
QUEUE_DEPTH = "curl http://localhost:8000/metrics | grep queue_depth"
DLQ = "curl http://localhost:8000/api/v1/admin/dlq | jq '.[] | {job_id, error}'"
VERBATIM = (NUM_WORKERS, QUEUE_DEPTH, DLQ)
MIN_RUNNABLE = 15
FENCE = re.compile(r"^```(.*)$")


@dataclass(frozen=True)
class Block:
    section: str  # the `##` heading above it (the title for blocks before the first)
    index: int  # 1-based among the section's runnable blocks
    code: str

    @property
    def id(self) -> str:
        return f"{slug(self.section)}-{self.index}"


def slug(heading: str) -> str:
    """The heading as an anchor would spell it: `Won't start` -> `wont-start`."""
    return re.sub(r"[^a-z0-9]+", "-", heading.lower().replace("'", "")).strip("-")


def parse(text: str) -> tuple[list[str], list[Block]]:
    """The `##` headings, and the runnable blocks with the section each sits in."""
    headings: list[str] = []
    blocks: list[Block] = []
    section = ""
    fence: str | None = None  # the info string of the block being read
    lines: list[str] = []
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, lines = match.group(1).strip(), []
            elif line.startswith("## "):
                section = line[3:].strip()
                headings.append(section)
            elif line.startswith("# ") and not section:
                section = line[2:].strip()
            continue
        if match and not match.group(1).strip():
            if fence.split() == ["bash", "runnable"]:
                counts[section] = counts.get(section, 0) + 1
                blocks.append(Block(section, counts[section], "\n".join(lines) + "\n"))
            fence = None
            continue
        lines.append(line)
    assert fence is None, "docs/troubleshooting.md ends inside a fenced block"
    return headings, blocks


HEADINGS, BLOCKS = parse(DOC.read_text())


def run_bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
    )


async def run_block(system: System, script: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the session's event loop (and what the fixtures run on it) keeps going.
    return await asyncio.to_thread(run_bash, script, system.env)


def report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_guide_has_its_sections_and_commands() -> None:
    text = DOC.read_text()
    for command in VERBATIM:
        assert command in text, f"the guide lost {command!r}"
    for section in SECTIONS:
        assert section in HEADINGS, f"no '## {section}' section"
        assert any(b.section == section for b in BLOCKS), f"'{section}' has no runnable block"
    assert len(BLOCKS) >= MIN_RUNNABLE, f"{len(BLOCKS)} runnable blocks, expected {MIN_RUNNABLE}"
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)
    runnable = "\n".join(b.code for b in BLOCKS)
    for command in VERBATIM:
        assert command in runnable, f"{command!r} is in no runnable block"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
async def test_runnable_block(system: System, workload: Workload, block: Block) -> None:
    result = await run_block(system, block.code)
    print(report(result))  # shown by pytest -rP
    assert result.returncode == 0, f"{block.id}:\n{block.code}\n{report(result)}"


def _num_workers(stdout: str) -> None:
    value: Any = json.loads(stdout)
    # Every worker process of the four consuming services, one each natively.
    assert isinstance(value, int) and not isinstance(value, bool) and value == 4, value


def _queue_depth(stdout: str) -> None:
    samples = [line for line in stdout.splitlines() if not line.startswith("#")]
    assert samples, stdout
    assert all(re.match(r'queue_depth\{queue="[^"]+"\} \d', line) for line in samples), stdout
    assert any("media-ingested" in line for line in samples), stdout


def _dead_letters(stdout: str) -> None:
    decoder = json.JSONDecoder()
    objects: list[Any] = []
    rest = stdout.strip()
    while rest:
        value, end = decoder.raw_decode(rest)
        objects.append(value)
        rest = rest[end:].strip()
    assert objects, "no dead letters listed (the workload dead-letters a truncated PNG)"
    assert all(isinstance(o, dict) and set(o) == {"job_id", "error"} for o in objects), objects
    assert all(o["job_id"] for o in objects), objects


CHECKS = {NUM_WORKERS: _num_workers, QUEUE_DEPTH: _queue_depth, DLQ: _dead_letters}


@pytest.mark.parametrize("command", VERBATIM, ids=["num-workers", "queue-depth", "dead-letters"])
async def test_verbatim_command_output(system: System, workload: Workload, command: str) -> None:
    result = await run_block(system, command)
    assert result.returncode == 0, report(result)
    CHECKS[command](result.stdout)


async def test_dead_letters_name_the_broken_upload(system: System, workload: Workload) -> None:
    result = await run_block(system, DLQ)
    assert result.returncode == 0, report(result)
    assert workload.broken_job in result.stdout, result.stdout
