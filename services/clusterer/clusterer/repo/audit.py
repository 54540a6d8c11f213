"""The clusterer's audit trail: one row per change it makes to clusters or filing."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson


async def audit(
    conn: asyncpg.Connection,
    actor: str,
    action: str,
    entity: str,
    entity_id: uuid.UUID | str,
    details: dict[str, Any],
) -> None:
    """Record one change, in the caller's transaction."""
    await conn.execute(
        """INSERT INTO audit_log (actor, action, entity, entity_id, details)
           VALUES ($1, $2, $3, $4, $5::text::jsonb)""",
        actor,
        action,
        entity,
        str(entity_id),
        orjson.dumps(details).decode(),
    )
