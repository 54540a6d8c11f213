"""What the schemer's handlers are given, and the rules its settings make."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.group_commit import GroupCommit
from common.worker import WorkerDeps
from schemer.decide import Rules
from schemer.repo.documents import Upload
from schemer.settings import SchemerSettings


@dataclass(frozen=True, kw_only=True)
class SchemerDeps(WorkerDeps):
    settings: SchemerSettings
    # The role DDL and collection writes run as; None: the login itself (see app.setup).
    role: str | None
    # Events' documents on their way into their collections, placed together (group commit).
    placer: GroupCommit[Any, None]


def rules(settings: SchemerSettings) -> Rules:
    return Rules(
        stability_threshold=settings.schema_stability_threshold,
        max_top_level_keys=settings.schema_max_top_level_keys,
        max_depth=settings.schema_max_depth,
    )


@dataclass(frozen=True)
class Parsed:
    upload: Upload
    document: dict[str, Any]
