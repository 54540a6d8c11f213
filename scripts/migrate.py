#!/usr/bin/env python3
"""Apply MammothBox's database migrations (idempotent; safe from many pods at once).

Usage: DATABASE_URL=postgresql://... python scripts/migrate.py [--create-database]
"""

from __future__ import annotations

import argparse
import asyncio

from common.log import configure_logging
from common.migrate import ensure_database, migrate
from common.settings import CommonSettings, load_settings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--create-database", action="store_true", help="create the database if it is missing"
    )
    args = parser.parse_args()
    settings = load_settings(CommonSettings)
    configure_logging(settings, "migrate")
    if args.create_database:
        await ensure_database(settings.database_url)
    applied = await migrate(settings.database_url)
    print(f"migrations applied: {len(applied)}" + (f" ({', '.join(applied)})" if applied else ""))


if __name__ == "__main__":
    asyncio.run(main())
