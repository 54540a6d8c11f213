"""python -m gateway.relay: an outbox relay on its own (pods may also relay in the gateway)."""

from __future__ import annotations

import asyncio

import uvloop

from common.bus import Bus
from common.db import open_pool
from common.log import configure_logging
from common.outbox import OutboxRelay
from common.settings import CommonSettings, load_settings
from common.telemetry import configure_telemetry


async def run(settings: CommonSettings) -> None:
    async with open_pool(settings, min_size=1, max_size=2) as pool:
        bus = Bus(settings)
        await bus.start()
        await bus.wait_connected(timeout=float("inf"))
        try:
            await OutboxRelay(pool, bus).run()
        finally:
            await bus.close()


def main() -> None:
    settings = load_settings(CommonSettings)
    configure_logging(settings, "relay")
    configure_telemetry("relay")
    uvloop.install()
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
