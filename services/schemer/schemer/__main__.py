"""python -m schemer: JSON documents to collections, with an inferred schema and a table."""

from __future__ import annotations

from schemer.app import worker
from schemer.settings import SchemerSettings

if __name__ == "__main__":
    worker.main(SchemerSettings)
