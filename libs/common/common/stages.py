"""The stages content moves through: one enum, the same list as the database's CHECK.

Each stage has one owner that advances it by compare-and-set (DESIGN: contracts):
ingested (gateway) -> embedded (embedder) -> clustered (clusterer) for media; stored for JSON;
failed (whoever parks its message) with the error. SQL statements name stages as literals;
tests/integration/test_migrate.py checks that the database allows exactly these.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A content row's `stage`."""

    INGESTED = "ingested"
    EMBEDDED = "embedded"
    CLUSTERED = "clustered"
    STORED = "stored"
    FAILED = "failed"


# Content still on its way: what the reconciler, backpressure and age metrics watch.
UNFINISHED = (Stage.INGESTED, Stage.EMBEDDED)
