#!/usr/bin/env python3
"""Check that every row has its bytes in the store and every object its row:
    python scripts/verify_store.py   # exit 1 when a row's bytes are missing

With the services' DATABASE_URL and STORAGE_PATH. How it works: gateway/backup.py.
"""

from __future__ import annotations

import sys

from gateway.backup import main

if __name__ == "__main__":
    raise SystemExit(main(["verify", *sys.argv[1:]]))
