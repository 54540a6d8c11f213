"""Retention policy: how many days an upload is kept, from RETENTION_DAYS and RETENTION_RULES.

A rule names a collection, an owner or a kind: `collection:logs=1,owner:alice=7,kind:json=30`.
The most specific rule that names an upload decides (collection, then owner, then kind, then
RETENTION_DAYS); 0 keeps forever, so `owner:legal=0` exempts an owner from a global limit. A
collection rule applies to the JSON documents of every owner's collection of that name, and
to JSON uploads that asked for it and are not placed yet. Pure: the SQL that applies it is in
repo/retention.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.names import COLLECTION_NAME, OWNER, OWNER_RULE

KINDS = ("image", "video", "json")


@dataclass(frozen=True)
class RetentionPolicy:
    """Days to keep (0: forever) by default and per collection, owner and kind."""

    default_days: float = 0.0
    collections: dict[str, float] = field(default_factory=dict)
    owners: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, float] = field(default_factory=dict)

    @property
    def shortest_days(self) -> float | None:
        """The shortest limit of any rule (nothing younger can be due); None when none has one."""
        every = (self.default_days, *self.collections.values(), *self.owners.values())
        limits = [d for d in (*every, *self.kinds.values()) if d > 0]
        return min(limits) if limits else None

    def as_json(self) -> dict[str, Any]:
        return {
            "default_days": self.default_days,
            "collections": self.collections,
            "owners": self.owners,
            "kinds": self.kinds,
        }


def _days(text: str, entry: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise ValueError(f"rule {entry!r}: days must be a number") from None
    if not math.isfinite(days) or days < 0:
        raise ValueError(f"rule {entry!r}: days must be 0 (keep forever) or more")
    return days


def parse_rules(entries: tuple[str, ...], default_days: float) -> RetentionPolicy:
    """The policy of RETENTION_RULES entries (`collection:NAME=DAYS`, `owner:NAME=DAYS`,
    `kind:image|video|json=DAYS`); ValueError naming the first bad entry."""
    targets: dict[str, dict[str, float]] = {"collection": {}, "owner": {}, "kind": {}}
    for entry in entries:
        what, colon, rest = entry.partition(":")
        name, equals, days = rest.rpartition("=")
        if not colon or not equals or what not in targets:
            raise ValueError(
                f"rule {entry!r}: must be collection:NAME=DAYS, owner:NAME=DAYS or kind:KIND=DAYS"
            )
        if what == "collection" and not COLLECTION_NAME.match(name):
            raise ValueError(f"rule {entry!r}: not a collection name")
        if what == "kind" and name not in KINDS:
            raise ValueError(f"rule {entry!r}: kind must be one of {', '.join(KINDS)}")
        if what == "owner" and not OWNER.match(name):
            raise ValueError(f"rule {entry!r}: owner must be {OWNER_RULE}")
        if name in targets[what]:
            raise ValueError(f"rule {entry!r}: {what} {name!r} has two rules")
        targets[what][name] = _days(days, entry)
    return RetentionPolicy(default_days, targets["collection"], targets["owner"], targets["kind"])
