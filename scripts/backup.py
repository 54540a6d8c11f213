#!/usr/bin/env python3
"""Back up the database and the content store together, consistently:
    python scripts/backup.py DEST   # writes DEST/mammothbox-<UTC time>/

With the services' DATABASE_URL and STORAGE_PATH. How it works: gateway/backup.py.
"""

from __future__ import annotations

import sys

from gateway.backup import main

if __name__ == "__main__":
    raise SystemExit(main(["create", *sys.argv[1:]]))
