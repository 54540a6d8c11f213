"""Re-clustering runs: on a schedule and on an admin's command, one model at a time.

A run reads the model's filed items, computes proposals (clusterer/recluster.py, in a thread:
scikit-learn holds the GIL little and the event loop must keep serving), and records them in
one transaction. It changes no cluster: proposals are carried out when an admin accepts them
(clusterer/commands.py), or at once for merges of provisional clusters when
CLUSTER_AUTO_MERGE is on. Uploads filed meanwhile are untouched; a proposal whose clusters or
members changed before it is accepted is applied to what is still there, or goes stale.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from clusterer import commands, repo
from clusterer.handlers import ClustererDeps
from clusterer.recluster import propose

log = structlog.get_logger(__name__)

RUN_SECONDS = Histogram(
    "recluster_run_seconds",
    "Time of one re-clustering run of one model.",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 180, 600, 1800),
)
PROPOSED = Counter("cluster_proposals_total", "Re-clustering proposals recorded.", ["kind"])


async def run_model(deps: ClustererDeps, model_id: str, actor: str) -> uuid.UUID | None:
    """One run over one model; its id, or None when another run of the model holds it."""
    start = time.perf_counter()
    run_id = uuid.uuid4()
    async with deps.pool.acquire() as conn:
        if not await repo.try_lock_model(conn, model_id):
            log.info("re-clustering already running elsewhere", model_id=model_id)
            return None
        try:
            await repo.start_run(conn, run_id, model_id, actor)
            try:
                added, automatic = await _run(deps, conn, run_id, model_id, start)
            except Exception as error:
                await repo.end_run(
                    conn,
                    run_id,
                    status="failed",
                    seconds=time.perf_counter() - start,
                    error=f"{type(error).__name__}: {error}"[:2000],
                )
                raise
        finally:
            await repo.unlock_model(conn, model_id)
    for proposal_id in automatic:
        await commands.decide_proposal(deps, proposal_id, "accept", "clusterer (auto-merge)")
    RUN_SECONDS.observe(time.perf_counter() - start)
    log.info("re-clustering done", model_id=model_id, run_id=str(run_id), proposed=added)
    return run_id


async def _run(
    deps: ClustererDeps, conn: asyncpg.Connection, run_id: uuid.UUID, model_id: str, start: float
) -> tuple[int, list[uuid.UUID]]:
    """Read, propose, record; (proposals added, those to carry out at once)."""
    await deps.models.get(deps.pool, model_id)  # calibrated now, if it was due
    linkage = await repo.linkage_threshold(conn, model_id)
    items, vectors = await repo.filed_items(conn, model_id)
    clusters = await repo.current_clusters(conn, model_id)
    result = None
    if linkage is not None and len(items) >= 2:
        max_items = deps.settings.cluster_recluster_max_items
        result = await asyncio.to_thread(propose, items, vectors, clusters, linkage, max_items)
    del vectors
    async with conn.transaction():
        added = await repo.record_proposals(
            conn, run_id, model_id, result.proposals if result else []
        )
        await repo.end_run(
            conn,
            run_id,
            status="done",
            seconds=time.perf_counter() - start,
            items=len(items),
            clusters=len(clusters),
            regions=result.regions if result else None,
            linkage=linkage,
            proposed=len(added),
        )
    for _, proposal in added:
        PROPOSED.labels(proposal.kind).inc()
    automatic = [i for i, p in added if p.automatic and deps.settings.cluster_auto_merge]
    return len(added), automatic


async def run_all(deps: ClustererDeps, actor: str, *, only_changed: bool) -> list[uuid.UUID]:
    """A run for each model with clusters (with `only_changed`: whose filed items changed
    since its last run); the runs' ids."""
    runs = []
    for row in await repo.models_with_clusters(deps.pool):
        if only_changed and row["last_items"] == row["items"]:
            continue
        run_id = await run_model(deps, row["model_id"], actor)
        if run_id is not None:
            runs.append(run_id)
    return runs


async def schedule(deps: ClustererDeps) -> None:
    """Every CLUSTER_RECLUSTER_INTERVAL_S, a run for each model whose clusters changed."""
    interval = deps.settings.cluster_recluster_interval_s
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await run_all(deps, "schedule", only_changed=True)
        except Exception:
            log.exception("scheduled re-clustering failed")
