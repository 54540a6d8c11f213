#!/usr/bin/env python3
"""Apply MammothBox's migrations (idempotent; safe from many pods at once).

Usage: DATABASE_URL=postgresql://... RABBITMQ_URL=amqp://... python scripts/migrate.py
           [--create-database] [--database-only]

The database migrations come first; then the bus topology is declared and the classic delay
queues of earlier releases are drained into their origin queues and removed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aio_pika

from common.log import configure_logging
from common.migrate import ensure_database, migrate
from common.settings import CommonSettings, load_settings
from common.topology import declare_all, migrate_legacy_delay_queues, queue_specs

BUS_WAIT_SECONDS = 30.0


async def migrate_bus(settings: CommonSettings) -> int:
    """Declare the topology and move what waits in legacy delay queues; messages moved."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUS_WAIT_SECONDS
    while True:
        try:
            connection = await aio_pika.connect(settings.amqp_url, timeout=5)
            break
        except (OSError, aio_pika.exceptions.AMQPError) as error:
            if loop.time() > deadline:
                print(f"RABBITMQ_URL: the broker is not reachable: {error}", file=sys.stderr)
                raise SystemExit(1) from None
            await asyncio.sleep(1)
    try:
        specs = queue_specs(settings.bus_queue_prefix)
        channel = await connection.channel()
        await declare_all(channel, settings, specs)
        await channel.close()
        return await migrate_legacy_delay_queues(connection, specs)
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--create-database", action="store_true", help="create the database if it is missing"
    )
    parser.add_argument(
        "--database-only", action="store_true", help="skip the bus topology migration"
    )
    args = parser.parse_args()
    settings = load_settings(CommonSettings)
    configure_logging(settings, "migrate")
    if args.create_database:
        await ensure_database(settings.database_dsn)
    applied = await migrate(settings.database_dsn)
    print(f"migrations applied: {len(applied)}" + (f" ({', '.join(applied)})" if applied else ""))
    if not args.database_only:
        moved = await migrate_bus(settings)
        print(f"bus topology declared; retries moved from legacy delay queues: {moved}")


if __name__ == "__main__":
    asyncio.run(main())
