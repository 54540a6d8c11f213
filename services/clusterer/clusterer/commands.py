"""Admin commands (rename, merge, update_threshold, confirm, reject; accept or dismiss a
re-clustering proposal; run the re-clustering now), run for the gateway.

Each command is one transaction. Folders that lose members are recorded in `folder_syncs` in
that transaction and synced after the commit; content to be filed again gets a
media.recluster event through the outbox, so a crash at any point strands nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import structlog
from pydantic import TypeAdapter, ValidationError

from clusterer import folders, repo, switching
from clusterer.errors import CommandError
from clusterer.handlers import ClustererDeps
from clusterer.logic import unique_name
from common import model_switch
from common.cluster_commands import (
    AdminRequest,
    ClusterCommand,
    ClusterCommandReply,
    Confirm,
    Merge,
    ModelSwitchCommand,
    ProposalCommand,
    ReclusterCommand,
    Reject,
    Rename,
    UpdateThreshold,
)
from common.clusters import cluster_json
from common.messages import Event, MediaRecluster
from common.outbox import add_events

log = structlog.get_logger(__name__)
REQUEST: TypeAdapter[AdminRequest] = TypeAdapter(AdminRequest)
# Runs started by a command, kept so that they are not collected while they run.
_RUNS: set[asyncio.Task[object]] = set()


async def answer(deps: ClustererDeps, body: bytes) -> bytes:
    """The RPC entry point: a command in, a reply out (never an exception)."""
    try:
        command = REQUEST.validate_json(body)
    except ValidationError as error:
        reply = ClusterCommandReply(
            status=400, error=f"invalid command: {error.errors()[0]['msg']}"
        )
        return reply.model_dump_json().encode()
    try:
        if isinstance(command, ProposalCommand):
            result = await decide_proposal(
                deps, command.proposal_id, command.decision, command.actor
            )
            reply = ClusterCommandReply(status=200, cluster=result)
        elif isinstance(command, ReclusterCommand):
            reply = ClusterCommandReply(status=202, cluster=start_recluster(deps, command))
        elif isinstance(command, ModelSwitchCommand):
            reply = ClusterCommandReply(status=200, cluster=await switching.run(deps, command))
        else:
            reply = ClusterCommandReply(status=200, cluster=await run(deps, command))
    except CommandError as error:
        reply = ClusterCommandReply(status=error.status, error=error.error, details=error.details)
    except Exception as error:
        log.exception("cluster command failed", command=type(command).__name__)
        reply = ClusterCommandReply(status=500, error=f"command failed: {type(error).__name__}")
    return reply.model_dump_json().encode()


def start_recluster(deps: ClustererDeps, command: ReclusterCommand) -> dict[str, Any]:
    """Start the runs in the background (they can take minutes); the reply says so."""
    from clusterer import reclustering  # it calls back into this module

    async def runs() -> object:
        if command.model_id is None:
            return await reclustering.run_all(deps, command.actor, only_changed=False)
        return await reclustering.run_model(deps, command.model_id, command.actor)

    task = asyncio.create_task(runs())
    _RUNS.add(task)
    task.add_done_callback(_finished)
    return {"started": True, "model_id": command.model_id}


def _finished(task: asyncio.Task[object]) -> None:
    _RUNS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("re-clustering run failed", error=repr(task.exception()))


async def decide_proposal(
    deps: ClustererDeps, proposal_id: uuid.UUID, decision: str, actor: str
) -> dict[str, Any]:
    """Accept (carry out) or dismiss a proposal, in one transaction; the proposal after."""
    syncs: list[uuid.UUID] = []
    stale: CommandError | None = None
    async with deps.pool.acquire() as conn, conn.transaction():
        proposal = await repo.lock_proposal(conn, proposal_id)
        if proposal is None:
            raise CommandError(404, "proposal not found")
        if proposal["status"] != "open":
            raise CommandError(
                409, f"the proposal is {proposal['status']}", {"status": proposal["status"]}
            )
        details: dict[str, Any] = {}
        if decision == "accept":
            try:
                async with conn.transaction():  # a savepoint: marking it stale must stick
                    details, syncs = await _carry_out(conn, proposal)
            except CommandError as error:
                if error.status != 409:
                    raise
                stale = error
        if stale is not None:
            await repo.decide(conn, proposal_id, "stale", actor)
            await repo.audit(
                conn,
                actor,
                "cluster.proposal.stale",
                "proposal",
                proposal_id,
                {"error": stale.error},
            )
        else:
            status = "accepted" if decision == "accept" else "dismissed"
            decided = await repo.decide(conn, proposal_id, status, actor)
            await repo.request_folder_syncs(conn, syncs)
            await repo.audit(
                conn,
                actor,
                f"cluster.proposal.{decision}",
                "proposal",
                proposal_id,
                {"kind": proposal["kind"], "plan": proposal["plan"], **details},
            )
    if stale is not None:
        raise CommandError(409, f"{stale.error}: the proposal is stale now", stale.details)
    deps.relay.wake()
    if syncs:
        await folders.run_pending_syncs(deps.pool, deps.storage, syncs)
    return {"proposal": decided, **details}


async def _carry_out(
    conn: asyncpg.Connection, proposal: dict[str, Any]
) -> tuple[dict[str, Any], list[uuid.UUID]]:
    """Apply the plan to what is there now; 409 (stale) when it no longer applies."""
    plan = proposal["plan"]
    model_id = proposal["model_id"]
    ids = [uuid.UUID(c) for c in proposal["cluster_ids"]]
    try:
        rows = {r["id"]: r for r in await _lock(conn, ids)}
    except CommandError as error:
        raise CommandError(409, "a cluster of the proposal is gone", error.details) from None
    if proposal["kind"] == "merge":
        target = uuid.UUID(plan["target"])
        merge = Merge(action="merge", source_ids=[uuid.UUID(s) for s in plan["sources"]])
        details = await _merge(conn, rows[target], merge)
        return details, [target, *merge.source_ids]
    members = [uuid.UUID(m) for m in plan.get("members", plan.get("part", []))]
    if proposal["kind"] == "move":
        source, target = uuid.UUID(plan["from"]), uuid.UUID(plan["to"])
    else:
        source, target = uuid.UUID(plan["cluster"]), uuid.uuid4()
        base = await repo.cluster_name(conn, source)
        name = unique_name(base, await repo.taken_names(conn, model_id, base))
        await repo.create_empty(conn, target, model_id, name)
    moved = await repo.move_listed(conn, members, source, target)
    if moved == 0:
        raise CommandError(409, "none of the proposal's members is still where it was")
    left = await _recompute(conn, source, model_id)
    count = await _recompute(conn, target, model_id)
    return {"moved": moved, "target": str(target), "member_count": count, "left": left}, [
        source,
        target,
    ]


async def run(deps: ClustererDeps, command: ClusterCommand) -> dict[str, Any]:
    """Carry out one command; the cluster afterwards (for reject: what became of it)."""
    change = command.change
    syncs: list[uuid.UUID] = []
    result: dict[str, Any]
    async with deps.pool.acquire() as conn, conn.transaction():
        target = await _lock(conn, [command.cluster_id])
        details: dict[str, Any]
        if isinstance(change, Rename):
            details = await _rename(conn, command.cluster_id, change)
        elif isinstance(change, Confirm):
            await repo.confirm(conn, command.cluster_id)
            details = {}
        elif isinstance(change, UpdateThreshold):
            details = await _update_threshold(conn, target[0], change)
            syncs = [command.cluster_id] if details["refiled"] else []
        elif isinstance(change, Merge):
            details = await _merge(conn, target[0], change)
            syncs = [command.cluster_id, *change.source_ids]
        else:
            assert isinstance(change, Reject)
            details = await _reject(conn, target[0])
            syncs = [command.cluster_id]
        await repo.request_folder_syncs(conn, syncs)
        await repo.audit(
            conn,
            command.actor,
            f"cluster.{change.action}",
            "cluster",
            command.cluster_id,
            {**change.model_dump(mode="json"), **details},
        )
        row = await repo.cluster_row(conn, command.cluster_id)
        result = {"cluster": cluster_json(row) if row else None, **details}
    deps.relay.wake()
    if syncs:
        await folders.run_pending_syncs(deps.pool, deps.storage, syncs)
    return result


async def _lock(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """Lock clusters in id order (one order: concurrent commands never deadlock); 404 if any
    is unknown."""
    rows = await repo.lock_clusters(conn, ids)
    found = {r["id"] for r in rows}
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise CommandError(404, "cluster not found", {"missing": missing})
    for model_id in {r["model_id"] for r in rows}:
        if await model_switch.role(conn, model_id) == "standby":
            raise CommandError(
                409,
                "this cluster is a model switch's standby one: it is built by the backfill"
                " and shown (and changed) once the switch flips",
                {"model_id": model_id},
            )
    by_id = {r["id"]: r for r in rows}
    return [by_id[i] for i in ids]


async def _rename(
    conn: asyncpg.Connection, cluster_id: uuid.UUID, change: Rename
) -> dict[str, Any]:
    try:
        async with conn.transaction():  # a savepoint: the 409 must not poison the command
            await repo.rename(conn, cluster_id, change.name, "admin")
    except asyncpg.UniqueViolationError:
        raise CommandError(409, "another cluster has this name", {"name": change.name}) from None
    return {}


async def _recompute(conn: asyncpg.Connection, cluster_id: uuid.UUID, model_id: str) -> int:
    """Centroid from the members' embeddings; the cluster goes when it has none left."""
    count = await repo.recompute_centroid(conn, cluster_id, model_id)
    if count == 0:
        await repo.delete_clusters(conn, [cluster_id])
    return count


async def _refile(conn: asyncpg.Connection, content_ids: list[uuid.UUID], model_id: str) -> None:
    """Take content out of its cluster and ask for it to be filed again as if new."""
    rows = await repo.unfile(conn, content_ids)
    events: list[Event] = [
        MediaRecluster(
            content_id=r["id"],
            job_id=r["first_job_id"],
            kind=r["kind"],
            model_id=model_id,
            near_duplicate_of=r["near_duplicate_of"],
        )
        for r in rows
    ]
    await add_events(conn, events)


async def _update_threshold(
    conn: asyncpg.Connection, cluster: asyncpg.Record, change: UpdateThreshold
) -> dict[str, Any]:
    try:
        await repo.set_threshold(conn, cluster["id"], change.threshold)
    except (asyncpg.CheckViolationError, asyncpg.NumericValueOutOfRangeError, ValueError):
        # The command model refuses these; one from a sender that did not check is still a
        # 400, not a failed command (asyncpg's DataError for an argument is a ValueError).
        raise CommandError(
            400,
            "the threshold cannot be stored: it must be in (0, 1] and fit a 32-bit float",
            {"threshold": change.threshold},
        ) from None
    if not change.reevaluate:
        return {"refiled": 0}
    # One pass against the current centroid; members below the new threshold are refiled.
    ids = await repo.members_below(conn, cluster["id"], cluster["model_id"], change.threshold)
    if ids:
        await _refile(conn, ids, cluster["model_id"])
        await _recompute(conn, cluster["id"], cluster["model_id"])
    return {"refiled": len(ids)}


async def _merge(conn: asyncpg.Connection, target: asyncpg.Record, change: Merge) -> dict[str, Any]:
    sources_ids = list(dict.fromkeys(change.source_ids))
    if target["id"] in sources_ids:
        raise CommandError(400, "a cluster cannot be merged into itself")
    sources = await _lock(conn, sources_ids)
    other = [str(s["id"]) for s in sources if s["model_id"] != target["model_id"]]
    if other:
        raise CommandError(
            409,
            "clusters of different embedding models cannot be merged",
            {"model_id": target["model_id"], "other_models": other},
        )
    moved = await repo.move_members(conn, target["id"], sources_ids)
    await repo.delete_clusters(conn, sources_ids)
    count = await _recompute(conn, target["id"], target["model_id"])
    return {"moved": moved, "member_count": count}


async def _reject(conn: asyncpg.Connection, cluster: asyncpg.Record) -> dict[str, Any]:
    members = await repo.members(conn, cluster["id"])
    await _refile(conn, members, cluster["model_id"])
    await repo.delete_clusters(conn, [cluster["id"]])
    return {"rejected": True, "refiled": len(members)}
