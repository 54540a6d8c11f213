#!/usr/bin/env python3
"""Restore a backup into an empty database and store, and drive again what was on its way:
    python scripts/restore.py SRC

With the services' DATABASE_URL and STORAGE_PATH. How it works: gateway/backup.py.
"""

from __future__ import annotations

import sys

from gateway.backup import main

if __name__ == "__main__":
    raise SystemExit(main(["restore", *sys.argv[1:]]))
