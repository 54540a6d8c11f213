"""A model switch's flip, drop and cancel, run for the gateway (common/model_switch.py).

The flip is one transaction: the next model becomes the active one; its standby clusters
take the place of the active ones (and these become the standby ones, kept until the drop);
each confirmed cluster's name passes to the new cluster that holds most of its members, if
that cluster is mostly made of them (a majority both ways, so at most one name per cluster);
media content the next model has not filed yet is filed again through the outbox. Folders
follow after the commit. A flip is refused while any stored media content still lacks the
next model's vector: search would miss it.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import structlog

from clusterer import folders
from clusterer.errors import CommandError
from clusterer.handlers import ClustererDeps
from clusterer.logic import unique_name
from clusterer.repo import request_folder_syncs
from clusterer.repo import switching as sql
from common import model_switch
from common.cluster_commands import ModelSwitchCommand
from common.messages import Event, MediaRecluster
from common.outbox import add_events
from common.vectors import MODELS_LOCK

log = structlog.get_logger(__name__)


ACTIONS = {"flipped": "flip", "dropped": "drop", "cancelled": "cancel"}


async def run(deps: ClustererDeps, command: ModelSwitchCommand) -> dict[str, Any]:
    async with deps.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(MODELS_LOCK)
            switch = await model_switch.live_switch(conn, lock=True)
            if switch is None:
                raise CommandError(404, "no model switch is under way")
            if command.switch == "flip":
                result, syncs = await _flip(conn, switch, command.actor)
            elif command.switch == "drop":
                result, syncs = await _drop(conn, switch, command.actor)
            else:
                result, syncs = await _cancel(conn, switch, command.actor)
    if command.switch != "flip":  # the removed model's indexes, outside the transaction
        removed = switch.from_model if command.switch == "drop" else switch.to_model
        await sql.drop_indexes(deps.pool, removed)
    # Folders follow now for a few clusters; the sweep does the rest (and after a crash).
    await folders.run_pending_syncs(deps.pool, deps.storage, syncs[:200])
    return result


async def _finish(
    conn: asyncpg.Connection,
    switch: model_switch.Switch,
    status: str,
    actor: str,
    report: dict[str, Any],
) -> dict[str, Any]:
    await sql.record(
        conn,
        switch.id,
        status,
        {status: report},
        actor,
        f"model.switch.{ACTIONS[status]}",
        switch.to_model,
        {"from": switch.from_model, **report},
    )
    done = await model_switch.live_switch(conn)
    latest = done or await model_switch.latest_switch(conn)
    assert latest is not None
    return latest.as_json()


async def _flip(
    conn: asyncpg.Connection, switch: model_switch.Switch, actor: str
) -> tuple[dict[str, Any], list[uuid.UUID]]:
    if switch.status == "flipped":
        raise CommandError(409, "the switch is flipped already: drop the old model's data next")
    progress = await model_switch.progress(conn, switch)
    if progress["pending"]:
        raise CommandError(
            409,
            f"{progress['pending']} stored media still lack a {switch.to_model} vector:"
            " flip once the backfill is done",
            progress,
        )
    old_clusters = await sql.clusters_of(conn, switch.from_model)
    new_clusters = await sql.clusters_of(conn, switch.to_model)
    names, carried, kept = carry_names(
        old_clusters, new_clusters, await sql.overlaps(conn, switch.to_model)
    )
    await sql.set_names(conn, names, carried)
    unfiled = await sql.swap_memberships(conn, switch.from_model, switch.to_model)
    events: list[Event] = [
        MediaRecluster(
            content_id=r["id"],
            job_id=r["first_job_id"],
            kind=r["kind"],
            model_id=switch.to_model,
            near_duplicate_of=r["near_duplicate_of"],
        )
        for r in unfiled
    ]
    await add_events(conn, events)
    syncs = [r["id"] for r in (*old_clusters, *new_clusters)]
    await request_folder_syncs(conn, syncs)
    report = {
        "names_carried": len(carried),
        "names_not_carried": kept,
        "refiled": len(unfiled),
        "clusters": len(new_clusters),
        "media": progress["media"],
    }
    log.info("model switch flipped", to_model=switch.to_model, **report)
    return await _finish(conn, switch, "flipped", actor, report), syncs


def carry_names(
    old: list[asyncpg.Record], new: list[asyncpg.Record], overlaps: list[asyncpg.Record]
) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, str], list[str]]:
    """Which new clusters take which confirmed old names: (names to set, carried clusters
    with their name source, confirmed names that found no cluster of their own).

    A name passes from an old cluster to a new one when more than half of the old one's
    members are in the new one, and more than half of the new one's came from the old one.
    A new cluster whose own name is in the way of a carried one is renamed aside.
    """
    old_by_id = {r["id"]: r for r in old}
    new_by_id = {r["id"]: r for r in new}
    carried_names: dict[uuid.UUID, str] = {}
    carried: dict[uuid.UUID, str] = {}
    for row in overlaps:
        source, target = old_by_id.get(row["old"]), new_by_id.get(row["new"])
        if source is None or target is None or source["provisional"]:
            continue
        n = row["n"]
        if 2 * n > source["member_count"] and 2 * n > target["member_count"]:
            carried_names[target["id"]] = source["name"]
            carried[target["id"]] = source["name_source"]
    taken = {r["name"] for r in new if r["id"] not in carried_names} | set(carried_names.values())
    names = dict(carried_names)
    for row in new:
        if row["id"] not in carried_names and row["name"] in carried_names.values():
            name = unique_name(row["name"], taken)
            taken.add(name)
            names[row["id"]] = name
    confirmed = {r["name"] for r in old if not r["provisional"]}
    return names, carried, sorted(confirmed - set(carried_names.values()))


async def _drop(
    conn: asyncpg.Connection, switch: model_switch.Switch, actor: str
) -> tuple[dict[str, Any], list[uuid.UUID]]:
    if switch.status != "flipped":
        raise CommandError(409, "flip the switch first: the old model is still the active one")
    syncs = [r["id"] for r in await sql.clusters_of(conn, switch.from_model)]
    await request_folder_syncs(conn, syncs)
    removed = await sql.remove_model_data(conn, switch.from_model, retire=True)
    log.info("old model dropped", model_id=switch.from_model, **removed)
    return await _finish(conn, switch, "dropped", actor, removed), syncs


async def _cancel(
    conn: asyncpg.Connection, switch: model_switch.Switch, actor: str
) -> tuple[dict[str, Any], list[uuid.UUID]]:
    if switch.status == "flipped":
        raise CommandError(409, "the switch is flipped: drop the old model's data instead")
    removed = await sql.remove_model_data(conn, switch.to_model, retire=False)
    log.info("model switch cancelled", model_id=switch.to_model, **removed)
    return await _finish(conn, switch, "cancelled", actor, removed), []
