"""Turn a published CRD YAML into this folder's trimmed JSON fixture.

Usage: python refresh.py REPOSITORY PATH COMMIT TAG [CRD.yaml] > <group>_<plural>.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml  # type: ignore[import-untyped]


def strip_descriptions(node: Any) -> Any:
    """Drop every ``description`` key whose value is a string, recursively."""
    if isinstance(node, dict):
        return {
            key: strip_descriptions(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def convert(crd: dict[str, Any], repository: str, path: str, commit: str, tag: str) -> str:
    """Return the fixture JSON for the served storage version of ``crd``."""
    spec = crd["spec"]
    version = next(v for v in spec["versions"] if v.get("storage") and v.get("served"))
    fixture = {
        "source": {
            "repository": repository,
            "path": path,
            "commit": commit,
            "version_tag_or_date": tag,
        },
        "group": spec["group"],
        "kind": spec["names"]["kind"],
        "version": version["name"],
        "schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
    }
    return json.dumps(fixture, indent=None, separators=(",", ":"), sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    repository, path, commit, tag = argv[1:5]
    with open(argv[5] if len(argv) == 6 else 0, encoding="utf-8", closefd=len(argv) == 6) as f:
        crd = yaml.safe_load(f)
    sys.stdout.write(convert(crd, repository, path, commit, tag))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
