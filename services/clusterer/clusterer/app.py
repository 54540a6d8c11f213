"""The clusterer as a worker: labels, an outbox relay, three queues, the command RPC, a sweep,
scheduled re-clustering."""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Gauge

from clusterer import commands, folders, reclustering, repo
from clusterer.handlers import (
    ClustererDeps,
    ModelCache,
    handle_analyzed,
    handle_embedded,
    handle_uploaded,
)
from clusterer.purge import handle_deleted
from clusterer.settings import ClustererSettings
from common.embed_client import TextEmbedClient
from common.labels import Labeler
from common.messages import (
    MediaAnalyzed,
    MediaEmbedded,
    MediaRecluster,
    MediaUploaded,
    StandbyEmbedded,
    UploadsDeleted,
)
from common.outbox import OutboxRelay
from common.topology import cluster_command_queue
from common.worker import Resources, Worker

log = structlog.get_logger(__name__)

CLUSTERS = Gauge(
    "clusters", "Clusters, by model and whether provisional.", ["model", "provisional"]
)


async def setup(settings: ClustererSettings, base: Resources) -> ClustererDeps:
    """The labeler that names clusters, and an outbox relay of its own."""
    labeler = Labeler(
        TextEmbedClient(base.bus, timeout=settings.label_timeout_s),
        settings.cluster_labels,
        settings.cluster_label_template,
    )
    # Commands write media.recluster events to the outbox; relay them from here too, so
    # refiling never waits on a gateway (several relays share the work safely).
    relay = OutboxRelay(base.pool, base.bus)
    return base.deps(
        ClustererDeps,
        settings,
        labeler=labeler,
        relay=relay,
        models=ModelCache(settings),
    )


async def _relay(deps: ClustererDeps) -> None:
    await deps.relay.run()


async def _publish_outbox(deps: ClustererDeps) -> None:
    """Before stopping: publish what the outbox holds (the loop may be between polls)."""
    while await deps.relay.relay_once():
        pass


async def _sweep(deps: ClustererDeps) -> None:
    """Sync folders a crash left waiting, and refresh the cluster gauge."""
    while True:
        try:
            synced = await folders.run_pending_syncs(deps.pool, deps.storage)
            if synced:
                log.info("synced folders left waiting", count=synced)
            rows = await repo.cluster_counts(deps.pool)
            CLUSTERS.clear()
            for row in rows:
                CLUSTERS.labels(row["model_id"], str(row["provisional"]).lower()).set(row["n"])
        except Exception as error:
            log.warning("folder sweep failed", error=str(error))
        await asyncio.sleep(deps.settings.folder_sweep_interval_s)


def _info(deps: ClustererDeps) -> dict[str, object]:
    return {
        "cluster_threshold": deps.settings.cluster_threshold,
        "threshold_explicit": deps.settings.threshold_is_explicit,
        "labels": len(deps.settings.cluster_labels),
        "recluster_interval_s": deps.settings.cluster_recluster_interval_s,
        "auto_merge": deps.settings.cluster_auto_merge,
        "calibrations": {
            model_id: calibration.as_json()
            for model_id in deps.models.known()
            if (calibration := deps.models.calibration(model_id)) is not None
        },
    }


def _prefetch(deps: ClustererDeps) -> int:
    return deps.settings.worker_threads


worker: Worker[ClustererSettings, ClustererDeps] = Worker("clusterer", setup)
worker.consume(
    {MediaEmbedded: handle_embedded, MediaRecluster: handle_embedded}, prefetch=_prefetch
)
# A model switch's standby clusters: their own queue, so a backfill never delays new uploads.
worker.consume({StandbyEmbedded: handle_embedded}, prefetch=_prefetch)
worker.consume({MediaUploaded: handle_uploaded}, prefetch=_prefetch)
worker.consume({MediaAnalyzed: handle_analyzed}, prefetch=_prefetch)
worker.consume({UploadsDeleted: handle_deleted}, prefetch=_prefetch)
worker.serve_rpc(
    lambda deps: cluster_command_queue(deps.settings.bus_queue_prefix), commands.answer, prefetch=4
)
worker.task("outbox-relay", _relay)
worker.on_drain("publish the outbox", _publish_outbox)
worker.task("folder-sweep", _sweep)
worker.task("recluster-schedule", reclustering.schedule)

worker.info(_info)
running = worker.running
