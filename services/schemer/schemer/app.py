"""The schemer as a worker: its DDL role, the JSON queue and the command queue."""

from __future__ import annotations

import structlog

from common.group_commit import GroupCommit
from common.messages import JsonIngested, JsonIngestedV1, SchemaCommand, UploadsDeleted
from common.worker import Resources, Worker
from schemer.approval import handle_command
from schemer.deletion import handle_deleted
from schemer.deps import SchemerDeps
from schemer.handlers import Pending, handle_ingested, handle_ingested_v1, place_groups
from schemer.repo import documents
from schemer.settings import SchemerSettings

log = structlog.get_logger(__name__)


async def setup(settings: SchemerSettings, base: Resources) -> SchemerDeps:
    """Whether DDL can run as its own role: where the database allows it, it does."""
    role: str | None = settings.schemer_ddl_role or None
    if role is not None:
        why_not = await documents.can_use_role(base.pool, role)
        if why_not is not None:
            log.warning("DDL runs as the login itself, with its rights", role=role, reason=why_not)
            role = None
    made: list[SchemerDeps] = []  # the group commit's writer needs the deps it is part of
    placer: GroupCommit[Pending, None] = GroupCommit(
        lambda pending: place_groups(made[0], pending), name="schemer-placement", max_batch=64
    )
    made.append(base.deps(SchemerDeps, settings, role=role, placer=placer))
    return made[0]


def _info(deps: SchemerDeps) -> dict[str, object]:
    settings = deps.settings
    return {
        "ddl_role": deps.role or "(the login)",
        "auto_approve": settings.schema_auto_approve,
        "match_threshold": settings.schema_match_threshold,
        "stability_threshold": settings.schema_stability_threshold,
        "max_depth": settings.schema_max_depth,
        "max_top_level_keys": settings.schema_max_top_level_keys,
    }


worker: Worker[SchemerSettings, SchemerDeps] = Worker("schemer", setup, uses_storage=False)
worker.consume(
    {JsonIngested: handle_ingested, JsonIngestedV1: handle_ingested_v1},
    prefetch=lambda deps: deps.settings.schemer_prefetch,
)
worker.consume(
    {SchemaCommand: handle_command},
    prefetch=lambda deps: 2,
    timeout_s=lambda deps: deps.settings.schemer_command_timeout_s,
)
worker.consume({UploadsDeleted: handle_deleted}, prefetch=lambda deps: 4)
worker.info(_info)
running = worker.running
