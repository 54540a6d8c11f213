"""The database a benchmark runs against: DATABASE_URL's server, or the local one
scripts/localdb.py starts, with a scratch database created for the run and dropped after."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from common.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent


def server_url() -> str:
    """DATABASE_URL, or the URL of the local PostgreSQL (started if it is not running)."""
    return (
        os.environ.get("DATABASE_URL")
        or subprocess.run(
            [sys.executable, str(ROOT / "scripts/localdb.py"), "start"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )


def on_server(url: str, database: str) -> str:
    """The URL of another database on the same server."""
    return url.rsplit("/", 1)[0] + f"/{database}"


@asynccontextmanager
async def scratch_database(prefix: str, *, migrated: bool = True) -> AsyncIterator[str]:
    """A fresh database for one run (its URL), migrated unless told not to; dropped when the
    block ends."""
    server = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(on_server(server, "postgres"))
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        url = on_server(server, name)
        if migrated:
            await migrate(url)
        yield url
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
