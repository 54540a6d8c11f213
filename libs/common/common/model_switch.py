"""Switching the embedding model: which model is active, the live switch, its progress.

A switch goes `backfilling` (the embedder embeds every content with the next model beside
the active one, the clusterer files the next model's vectors in clusters of their own) and
may be `paused` and resumed; `flipped` makes the next model the active one (search and the
cluster views use it from that commit on; the old model's clusters become the standby ones);
`dropped` removes the old model's vectors and clusters and retires it. `cancelled` gives up a
switch before its flip, dropping what the next model had made.

Every service reads the state from the database, at the moment it acts: there is no cache
to go stale across a flip.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from common.db import Conn
from common.vectors import MODELS_LOCK, MODELS_SHARED_LOCK

LIVE = ("backfilling", "paused", "flipped")
# SQL: the live switch's model that is not the active one (none without a live switch).
STANDBY_MODEL = """SELECT CASE WHEN s.status = 'flipped' THEN s.from_model ELSE s.to_model END
FROM model_switches s WHERE s.status IN ('backfilling', 'paused', 'flipped')"""


class SwitchConflict(RuntimeError):
    """The requested switch does not fit the one under way (or the models' state)."""


@dataclass(frozen=True)
class Switch:
    id: uuid.UUID
    from_model: str
    to_model: str
    status: str
    requested_by: str
    started_at: datetime
    flipped_at: datetime | None
    finished_at: datetime | None
    report: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "from_model": self.from_model,
            "to_model": self.to_model,
            "status": self.status,
            "requested_by": self.requested_by,
            "started_at": self.started_at.isoformat(),
            "flipped_at": self.flipped_at.isoformat() if self.flipped_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "report": self.report,
        }


_COLUMNS = (
    "id, from_model, to_model, status, requested_by, started_at, flipped_at, finished_at,"
    " report::text AS report"
)


def _switch(row: asyncpg.Record | None) -> Switch | None:
    if row is None:
        return None
    values = dict(row)
    values["report"] = orjson.loads(values["report"])
    return Switch(**values)


async def live_switch(conn: Conn, *, lock: bool = False) -> Switch | None:
    """The switch under way (backfilling, paused or flipped), if any."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM model_switches WHERE status = ANY($1::text[])"
        + (" FOR UPDATE" if lock else ""),
        list(LIVE),
    )
    return _switch(row)


async def latest_switch(conn: Conn) -> Switch | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM model_switches ORDER BY started_at DESC LIMIT 1"
    )
    return _switch(row)


async def active_model(conn: Conn) -> tuple[str, int] | None:
    """(id, dimension) of the model search uses; None before any model is registered."""
    row = await conn.fetchrow("SELECT id, dim FROM models WHERE active")
    return None if row is None else (row["id"], int(row["dim"]))


async def role(conn: Conn, model_id: str) -> str:
    """'active', 'standby' (the live switch's other model), 'retired', 'other' (registered,
    in use by nothing: a cancelled switch's, say), or 'unknown' (not registered at all)."""
    row = await conn.fetchrow(
        """SELECT m.active, m.retired_at IS NOT NULL AS retired,
                  EXISTS (SELECT FROM model_switches s
                          WHERE s.status = ANY($2::text[])
                            AND $1 IN (s.from_model, s.to_model)) AS switching
           FROM models m WHERE m.id = $1""",
        model_id,
        list(LIVE),
    )
    if row is None:
        return "unknown"
    if row["retired"]:
        return "retired"
    if row["active"]:
        return "active"
    return "standby" if row["switching"] else "other"


async def held_role(conn: asyncpg.Connection, model_id: str) -> str:
    """The model's role, kept until the transaction ends: a flip, drop or cancel waits for
    it, so what is written by this role is there when they move or remove that role's data
    (and a filing that waited for one sees the role it left)."""
    await conn.execute(MODELS_SHARED_LOCK)
    return await role(conn, model_id)


async def retired(conn: Conn, model_ids: list[str]) -> list[str]:
    """Those of the models whose data was dropped after a switch."""
    rows = await conn.fetch(
        "SELECT id FROM models WHERE id = ANY($1::text[]) AND retired_at IS NOT NULL", model_ids
    )
    return sorted(r["id"] for r in rows)


async def start(conn: asyncpg.Connection, to_model: str, actor: str) -> Switch:
    """Start switching from the active model to `to_model` (registered); the switch under way
    when it is that one already. SwitchConflict when another one is under way."""
    async with conn.transaction():
        await conn.execute(MODELS_LOCK)
        live = await live_switch(conn)
        if live is not None:
            if to_model in (live.from_model, live.to_model):
                return live
            raise SwitchConflict(
                f"a switch from {live.from_model} to {live.to_model} is under way ({live.status});"
                " drop or cancel it first"
            )
        active = await active_model(conn)
        if active is None:
            raise SwitchConflict("no model is active yet: there is nothing to switch from")
        if active[0] == to_model:
            raise SwitchConflict(f"{to_model} is the active model already")
        row = await conn.fetchrow(
            f"""INSERT INTO model_switches (id, from_model, to_model, requested_by)
                VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}""",
            uuid.uuid4(),
            active[0],
            to_model,
            actor,
        )
        await conn.execute(
            """INSERT INTO audit_log (actor, action, entity, entity_id, details)
               VALUES ($1, 'model.switch.start', 'model', $2, $3::text::jsonb)""",
            actor,
            to_model,
            orjson.dumps({"from": active[0]}).decode(),
        )
    switch = _switch(row)
    assert switch is not None
    return switch


async def set_paused(conn: asyncpg.Connection, paused: bool, actor: str) -> Switch:
    """Pause or resume the backfill of the switch under way (before its flip)."""
    async with conn.transaction():
        live = await live_switch(conn, lock=True)
        if live is None:
            raise SwitchConflict("no model switch is under way")
        wanted, other = ("paused", "backfilling") if paused else ("backfilling", "paused")
        if live.status not in (wanted, other):
            raise SwitchConflict(f"the switch is {live.status}: there is no backfill to pause")
        row = await conn.fetchrow(
            f"UPDATE model_switches SET status = $2 WHERE id = $1 RETURNING {_COLUMNS}",
            live.id,
            wanted,
        )
        await conn.execute(
            """INSERT INTO audit_log (actor, action, entity, entity_id, details)
               VALUES ($1, $2, 'model', $3, '{}')""",
            actor,
            "model.switch.pause" if paused else "model.switch.resume",
            live.to_model,
        )
    switch = _switch(row)
    assert switch is not None
    return switch


# Media content an embedding of the model is still missing for (the backfill's work).
MISSING = """c.kind <> 'json' AND c.stage IN ('embedded', 'clustered')
  AND NOT EXISTS (SELECT FROM embeddings e WHERE e.content_id = c.id AND e.model_id = $1)"""


async def progress(conn: Conn, switch: Switch) -> dict[str, int]:
    """Media content, how much of it the next model has embedded, and filed (in standby
    clusters before the flip, in active ones after)."""
    row = await conn.fetchrow(
        f"""SELECT (SELECT count(*) FROM content c
                    WHERE c.kind <> 'json' AND c.stage IN ('embedded', 'clustered')) AS media,
                   (SELECT count(*) FROM content c WHERE {MISSING}) AS pending,
                   (SELECT count(*) FROM standby_members WHERE model_id = $1) AS standby_filed,
                   (SELECT count(*) FROM content c JOIN clusters cl ON cl.id = c.cluster_id
                    WHERE cl.model_id = $1) AS active_filed""",
        switch.to_model,
    )
    media, pending = int(row["media"]), int(row["pending"])
    filed = row["active_filed"] if switch.status == "flipped" else row["standby_filed"]
    return {"media": media, "embedded": media - pending, "pending": pending, "filed": int(filed)}
