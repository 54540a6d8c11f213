"""python -m clusterer: file media into clusters.

`python -m clusterer rebuild-folders [--from-scratch]` rebuilds the folders from the database.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

from clusterer.app import worker
from clusterer.folders import rebuild
from clusterer.settings import ClustererSettings
from common.db import open_pool
from common.log import configure_logging
from common.settings import load_settings
from common.storage import open_storage


async def _rebuild(settings: ClustererSettings, from_scratch: bool) -> None:
    storage = open_storage(settings)
    try:
        async with open_pool(settings) as pool:
            count = await rebuild(pool, storage, from_scratch=from_scratch)
    finally:
        await storage.close()
    if storage.folders is None:
        print(f"{storage.backend} storage keeps no folders: {count} clusters are listed by the API")
    else:
        print(f"rebuilt the folders of {count} clusters")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m clusterer")
    sub = parser.add_subparsers(dest="command")
    rebuild_parser = sub.add_parser("rebuild-folders", help="rebuild cluster folders from the DB")
    rebuild_parser.add_argument(
        "--from-scratch", action="store_true", help="remove each folder first, then recreate it"
    )
    args = parser.parse_args()
    if args.command != "rebuild-folders":
        worker.main(ClustererSettings)
        return
    # rebuild-folders listens on nothing.
    settings = load_settings(ClustererSettings)
    configure_logging(settings, "clusterer")
    uvloop.install()
    asyncio.run(_rebuild(settings, args.from_scratch))


if __name__ == "__main__":
    main()
