"""media.embedded -> nearest centroid or a new provisional cluster -> links -> media.clustered.

Also: a later upload of stored media gets its link (media.uploaded), and a provisional
cluster still carrying its placeholder takes the analyzer's suggested name (media.analyzed).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import structlog
from numpy.typing import NDArray
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from clusterer import folders, repo
from clusterer.logic import choose, clean_name, unique_name, untitled_name
from clusterer.settings import ClustererSettings
from common import model_switch, tombstones
from common.calibration import Calibration, calibrate, due
from common.consumer import Delivery, Permanent, Retryable
from common.labels import Labeler
from common.messages import (
    CLIP_FALLBACK_MODEL,
    MediaAnalyzed,
    MediaClustered,
    MediaEmbedded,
    MediaUploaded,
)
from common.outbox import OutboxRelay
from common.stages import UNFINISHED, Stage
from common.storage import Storage
from common.telemetry import link_span
from common.worker import WorkerDeps

log = structlog.get_logger(__name__)

ASSIGNMENT_LATENCY = Histogram(
    "cluster_assignment_seconds",
    "Time to file one content in a cluster (nearest search, join or create, commit).",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CLUSTERS_CREATED = Counter("clusters_created_total", "Provisional clusters opened.")
ATTEMPTS = 10


@dataclass(frozen=True, kw_only=True)
class ClustererDeps(WorkerDeps):
    settings: ClustererSettings
    storage: Storage
    labeler: Labeler
    relay: OutboxRelay
    models: ModelCache


class ModelCache:
    """Models by id with their joining thresholds: CLUSTER_THRESHOLD when it is set, else the
    ones calibrated from the model's own items (common/calibration.py), of which the
    manifest's value (or the default) is a weak prior.

    The calibration is redone, and stored in `models` for the gateway and other replicas, on
    first sight of a model, when this process has filed max(1, 5 %) more items than it was
    made from, and at least every CALIBRATION_TTL seconds when the model grew elsewhere.
    """

    CALIBRATION_TTL = 30.0

    def __init__(self, settings: ClustererSettings) -> None:
        self.settings = settings
        self._models: dict[str, tuple[float, repo.Model, Calibration]] = {}
        self._filed: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def filed(self, model_id: str) -> None:
        """One more item of this model was filed here."""
        self._filed[model_id] = self._filed.get(model_id, 0) + 1

    def known(self) -> list[str]:
        return sorted(self._models)

    def calibration(self, model_id: str) -> Calibration | None:
        cached = self._models.get(model_id)
        return cached[2] if cached else None

    def _fresh(self, model_id: str) -> repo.Model | None:
        cached = self._models.get(model_id)
        if cached is None or time.monotonic() - cached[0] >= self.CALIBRATION_TTL:
            return None
        _, model, calibration = cached
        if self._filed.get(model_id, 0) >= max(1, calibration.items // 20):
            return None
        return model

    async def get(self, pool: asyncpg.Pool, model_id: str) -> repo.Model:
        model = self._fresh(model_id)
        if model is not None:
            return model
        async with self._locks.setdefault(model_id, asyncio.Lock()):
            model = self._fresh(model_id)  # another handler may have done it meanwhile
            if model is None:
                model = await self._calibrate(pool, model_id)
        return model

    async def _calibrate(self, pool: asyncpg.Pool, model_id: str) -> repo.Model:
        row = await repo.model(pool, model_id)
        if row is None:
            raise Permanent(f"unknown model {model_id!r}")
        self._filed[model_id] = 0
        own = row["cluster_threshold"]
        prior = float(own) if own is not None else self.settings.cluster_threshold
        override = self.settings.cluster_threshold if self.settings.threshold_is_explicit else None
        items = await repo.item_count(pool, model_id)
        stored = row["calibration"]
        if _reusable(stored, items, prior, override):
            assert stored is not None
            calibration = Calibration.from_json(stored)
        else:
            sample = await repo.sample(pool, model_id, self.settings.cluster_calibration_sample)
            calibration = calibrate(sample, items, prior, override)
            await repo.store_calibration(
                pool,
                model_id,
                calibration.threshold_for(1),
                calibration.linkage,
                calibration.as_json(),
            )
            log.info("model calibrated", model_id=model_id, **calibration.as_json())
        model = repo.Model(model_id, int(row["dim"]), calibration)
        self._models[model_id] = (time.monotonic(), model, calibration)
        return model


def _reusable(
    stored: dict[str, Any] | None, items: int, prior: float, override: float | None
) -> bool:
    """Whether a stored calibration still holds: the model has not changed enough since, and
    it was made under the same prior and CLUSTER_THRESHOLD override (or none)."""
    if stored is None or due(items, stored.get("items")):
        return False
    return _same(stored.get("override"), override) and _same(stored.get("prior"), prior)


def _same(stored: float | None, value: float | None) -> bool:
    """Equal as stored (rounded to 6 digits; a `real` column's 0.72 reads 0.7200000286)."""
    if stored is None or value is None:
        return stored is value
    return abs(stored - value) < 1e-5


async def handle_embedded(deps: ClustererDeps, event: MediaEmbedded, delivery: Delivery) -> None:
    """File one content by the event's model, as that model stands now: in the active
    model's clusters, or (a model switch's other model) in its standby clusters, whatever
    queue the event came by (a flip may have come between its publish and now)."""
    role = await model_switch.role(deps.pool, event.model_id)
    if role == "standby":
        await _file_standby(deps, event)
    elif role == "active":
        await _file_active(deps, event)
    elif role == "unknown":
        raise Permanent(f"unknown model {event.model_id!r}")
    else:
        log.info("event of a model not in use", model_id=event.model_id, role=role)


async def _file_standby(deps: ClustererDeps, event: MediaEmbedded) -> None:
    """File the content in the model's standby clusters (no folders, nothing to tell)."""
    model = await deps.models.get(deps.pool, event.model_id)
    row = await repo.content_to_file(deps.pool, event.content_id, event.model_id)
    if row is None:
        await tombstones.missing(deps.pool, event.content_id)
        return
    if row.embedding is None or row.stage == Stage.FAILED:
        return  # its vector was dropped (a cancelled switch), or it failed meanwhile
    if await repo.standby_cluster_of(deps.pool, row.id, event.model_id) is not None:
        return  # filed before: a redelivery
    start = time.perf_counter()
    outcome = await _assign(deps, model, row.id, row.embedding, row.near_duplicate_of, standby=True)
    ASSIGNMENT_LATENCY.labels(f"standby_{outcome}").observe(time.perf_counter() - start)
    deps.models.filed(event.model_id)


async def _file_active(deps: ClustererDeps, event: MediaEmbedded) -> None:
    model = await deps.models.get(deps.pool, event.model_id)
    row = await repo.content_to_file(deps.pool, event.content_id, event.model_id)
    if row is None:
        await tombstones.missing(deps.pool, event.content_id)
        return
    new_cluster = False
    if row.stage == Stage.EMBEDDED:
        if row.embedding is None:
            raise Permanent(f"content {event.content_id} has no {event.model_id} embedding")
        start = time.perf_counter()
        outcome = await _assign(deps, model, row.id, row.embedding, row.near_duplicate_of)
        ASSIGNMENT_LATENCY.labels(outcome).observe(time.perf_counter() - start)
        deps.models.filed(event.model_id)
        new_cluster = outcome == "created"
    elif row.stage != Stage.CLUSTERED:
        return  # failed, or not ours to file
    # Filed now or before (a redelivery after a crash between commit and links): link, tell.
    cluster_id = await folders.ensure_links(deps.pool, deps.storage, event.content_id)
    if cluster_id is None:
        if await tombstones.was_deleted(deps.pool, event.content_id):
            return  # deleted while it was being filed
        raise Retryable(f"content {event.content_id} was taken out of its cluster meanwhile")
    out = MediaClustered(
        content_id=event.content_id,
        job_id=event.job_id,
        cluster_id=cluster_id,
        model_id=event.model_id,
        new_cluster=new_cluster,
    )
    await deps.bus.publish(
        out.routing_key, out.to_bytes(), message_id=str(out.message_id), mandatory=False
    )


async def _assign(
    deps: ClustererDeps,
    model: repo.Model,
    content_id: uuid.UUID,
    vector: NDArray[np.float32],
    original: uuid.UUID | None = None,
    *,
    standby: bool = False,
) -> str:
    """Join the nearest cluster that takes it, or open one; 'joined', 'created' or 'done'.

    A near-duplicate (`original`: the content it copies, found by pHash) joins its original's
    cluster when the original is filed: a re-encoded copy is the same picture, whatever the
    threshold says of its vector. `standby`: the model's standby clusters (a model switch).
    """
    placeholder: str | None = None
    new_id = uuid.uuid4()
    for _ in range(ATTEMPTS):
        try:
            async with deps.pool.acquire() as conn:
                async with conn.transaction():
                    await _keep_role(conn, model.model_id, standby)
                    await repo.prefer_index(conn)
                    best = None
                    if original is not None:
                        best = await repo.cluster_of_original(
                            conn, model, original, vector, standby
                        )
                    if best is None:
                        best = choose(await repo.nearest(conn, model, vector))
                    if best is not None:
                        await repo.join(
                            conn, best.cluster_id, content_id, vector, best.similarity, standby
                        )
                if best is not None:
                    return "joined"
                if placeholder is None:
                    # Outside any lock: the text RPC may take a while.
                    placeholder = await deps.labeler.label(model.model_id, vector) or untitled_name(
                        new_id
                    )
                async with conn.transaction():
                    await _keep_role(conn, model.model_id, standby)
                    await repo.lock_create_path(conn, model.model_id)
                    # Look again, exactly: a replica may have opened this kind's cluster
                    # while we waited for the lock.
                    best = choose(await repo.nearest(conn, model, vector, exact=True))
                    if best is not None:
                        await repo.join(
                            conn, best.cluster_id, content_id, vector, best.similarity, standby
                        )
                        return "joined"
                    taken = await repo.taken_names(conn, model.model_id, placeholder)
                    name = unique_name(placeholder, taken)
                    await repo.create(conn, new_id, model, name, content_id, vector, standby)
            CLUSTERS_CREATED.inc()
            log.info("cluster opened", cluster_id=str(new_id), name=name)
            return "created"
        except repo.ClusterGone:
            continue  # merged away or rejected under us: choose again
        except asyncpg.UniqueViolationError:
            continue  # a name taken concurrently (a rename): choose a name again
        except repo.AlreadyFiled:
            return "done"
    raise Retryable("could not file the content after several attempts")


async def _keep_role(conn: asyncpg.Connection, model_id: str, standby: bool) -> None:
    """Hold the model's role for the filing transaction; if a flip, drop or cancel changed it
    since the event was dispatched, the event goes round again to be filed by the new role
    (a vector filed meanwhile would land in clusters that were just moved or removed)."""
    now = await model_switch.held_role(conn, model_id)
    if now != ("standby" if standby else "active"):
        raise Retryable(f"model {model_id} is {now} now: filing by that role")


async def handle_uploaded(deps: ClustererDeps, event: MediaUploaded, delivery: Delivery) -> None:
    """A new upload of stored media: its link goes where the content already is.

    Content not filed yet needs nothing: filing links every upload committed before it.
    The span links the trace that processed the content (embedding, filing, analysis).
    """
    if trace.get_current_span().is_recording():
        origin = await repo.origin_trace(deps.pool, event.content_id)
        if origin is not None:
            link_span(origin["trace_id"], origin["span_id"], "processed the content")
    await folders.ensure_links(deps.pool, deps.storage, event.content_id)


async def handle_analyzed(deps: ClustererDeps, event: MediaAnalyzed, delivery: Delivery) -> None:
    """Name a provisional cluster that still has its placeholder after the VLM's suggestion.

    The analyzer's CLIP fallback names nothing: its label is what the placeholder already is,
    and the cluster should stay open to a VLM's name from a later member's analysis.
    """
    suggestion = clean_name(event.suggested_cluster_name) or clean_name(event.primary_category)
    if suggestion is None or event.vlm_model == CLIP_FALLBACK_MODEL:
        return
    stage = await repo.content_stage(deps.pool, event.content_id)
    if stage is None:
        await tombstones.missing(deps.pool, event.content_id)
        return
    if stage in UNFINISHED:
        # The analysis overtook the filing; try again once the content has its cluster.
        raise Retryable(f"content {event.content_id} is not filed yet")
    for _ in range(ATTEMPTS):
        try:
            async with deps.pool.acquire() as conn, conn.transaction():
                cluster = await repo.lock_placeholder_cluster(conn, event.content_id)
                if cluster is None:
                    return  # named already (by the VLM or an admin), confirmed, or not filed
                # The cluster's own name is not in the way of itself.
                taken = await repo.taken_names(conn, cluster["model_id"], suggestion)
                taken -= {cluster["name"]}
                name = unique_name(suggestion, taken)
                await repo.rename(conn, cluster["id"], name, "vlm")
                await repo.audit(
                    conn,
                    event.vlm_model,
                    "cluster.name",
                    "cluster",
                    cluster["id"],
                    {"from": cluster["name"], "to": name, "content_id": str(event.content_id)},
                )
            return
        except asyncpg.UniqueViolationError:
            continue
    raise Retryable("could not find a free name")
