"""Wiring: resources in a cleanup context, middlewares, routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from common.bus import Bus
from common.db import open_pool
from common.dlq import DeadLetterRecorder
from common.embed_client import ImageEmbedClient, TextEmbedClient
from common.http import harden
from common.outbox import OutboxRelay
from common.rpc import RpcClient
from common.storage import StorageUnavailable, open_storage
from common.telemetry import untraced
from common.topology import cluster_command_queue
from gateway.auth import KEYS, KeyRing, authenticate, cors, parse_keys
from gateway.backpressure import Backpressure
from gateway.clusters import handle_cluster, handle_clusters, handle_patch_cluster
from gateway.deadletters import (
    handle_dlq_job,
    handle_dlq_list,
    handle_dlq_purge,
    handle_dlq_purge_job,
    handle_dlq_requeue_all,
    handle_dlq_requeue_job,
)
from gateway.deletion import handle_delete_job, handle_delete_object, handle_delete_owner
from gateway.deps import DEPS, Deps
from gateway.errors import RETRY_AFTER, request_context
from gateway.ingest import handle_ingest
from gateway.ingest_commit import ingest_commit
from gateway.openapi import handle_openapi
from gateway.ops import handle_health, handle_live, handle_metrics, handle_ready
from gateway.proposals import handle_accept, handle_dismiss, handle_proposals, handle_recluster
from gateway.retention import Retention, handle_retention, handle_retention_run
from gateway.schemas import (
    handle_approve,
    handle_approve_migration,
    handle_document,
    handle_documents,
    handle_reject,
    handle_schema,
    handle_schemas,
)
from gateway.search import handle_search_get, handle_search_post
from gateway.settings import GatewaySettings
from gateway.sweep import Sweeper
from gateway.switching import handle_model_switch, handle_model_switch_action
from gateway.timeline import handle_timeline
from gateway.ui import handle_asset, handle_me, handle_page
from gateway.uploads import UPLOAD_SLOTS, UploadSlots
from gateway.views import (
    handle_job_status,
    handle_object,
    handle_object_content,
    handle_object_thumbnail,
)

log = structlog.get_logger(__name__)


def build_app(settings: GatewaySettings) -> web.Application:
    """The gateway application; resources open when it starts and close when it stops."""
    admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
    keys = KeyRing(parse_keys(settings.api_key_entries, admin_key))
    if keys.open:
        log.warning(
            "NO API KEYS CONFIGURED: the API is open to anyone who reaches this port;"
            " set API_KEYS and ADMIN_API_KEY"
        )
    app = harden(
        web.Application(
            middlewares=[cors(settings.cors_allow_origins), request_context, authenticate],
            client_max_size=settings.max_json_bytes + 1024 * 1024,
            # The keep-alive timeout also bounds how long a request's headers may take.
            handler_args={
                "max_field_size": 16384,
                "keepalive_timeout": settings.http_keepalive_timeout_seconds,
            },
        )
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with _resources(settings) as deps:
            app[DEPS] = deps
            yield

    app[KEYS] = keys
    app[RETRY_AFTER] = settings.retry_after_seconds
    app[UPLOAD_SLOTS] = UploadSlots(settings.max_concurrent_uploads, settings.retry_after_seconds)
    app.cleanup_ctx.append(resources)
    app.router.add_post("/api/v1/ingest", handle_ingest)
    app.router.add_get("/api/v1/ingest/{job_id}/status", handle_job_status)
    app.router.add_get("/api/v1/ingest/{job_id}/timeline", handle_timeline)
    app.router.add_get("/api/v1/objects/{object_id}", handle_object)
    app.router.add_delete("/api/v1/objects/{object_id}", handle_delete_object)
    app.router.add_delete("/api/v1/ingest/{job_id}", handle_delete_job)
    app.router.add_delete("/api/v1/admin/owners/{owner}", handle_delete_owner)
    app.router.add_get("/api/v1/objects/{object_id}/content", handle_object_content)
    app.router.add_get("/api/v1/objects/{object_id}/thumbnail", handle_object_thumbnail)
    app.router.add_get("/api/v1/clusters", handle_clusters)
    # Before /clusters/{cluster_id}, which would take "proposals" for a cluster id.
    app.router.add_get("/api/v1/clusters/proposals", handle_proposals)
    app.router.add_post("/api/v1/clusters/proposals/{proposal_id}/accept", handle_accept)
    app.router.add_post("/api/v1/clusters/proposals/{proposal_id}/dismiss", handle_dismiss)
    app.router.add_post("/api/v1/clusters/recluster", handle_recluster)
    app.router.add_get("/api/v1/clusters/{cluster_id}", handle_cluster)
    app.router.add_patch("/api/v1/clusters/{cluster_id}", handle_patch_cluster)
    app.router.add_get("/api/v1/schemas", handle_schemas)
    app.router.add_get("/api/v1/schemas/{schema_id}", handle_schema)
    app.router.add_post("/api/v1/schemas/{schema_id}/approve", handle_approve)
    app.router.add_post("/api/v1/schemas/{schema_id}/reject", handle_reject)
    app.router.add_post(
        "/api/v1/schemas/{schema_id}/migrations/{n}/approve", handle_approve_migration
    )
    app.router.add_get("/api/v1/collections/{name}/documents", handle_documents)
    app.router.add_get("/api/v1/collections/{name}/documents/{object_id}", handle_document)
    app.router.add_get("/api/v1/search", handle_search_get)
    app.router.add_post("/api/v1/search", handle_search_post)
    app.router.add_get("/api/v1/admin/retention", handle_retention)
    app.router.add_post("/api/v1/admin/retention/run", handle_retention_run)
    app.router.add_get("/api/v1/admin/model-switch", handle_model_switch)
    app.router.add_post("/api/v1/admin/model-switch/{action}", handle_model_switch_action)
    app.router.add_get("/api/v1/admin/dlq", handle_dlq_list)
    app.router.add_delete("/api/v1/admin/dlq", handle_dlq_purge)
    app.router.add_post("/api/v1/admin/dlq/requeue", handle_dlq_requeue_all)
    app.router.add_get("/api/v1/admin/dlq/{job_id}", handle_dlq_job)
    app.router.add_delete("/api/v1/admin/dlq/{job_id}", handle_dlq_purge_job)
    app.router.add_post("/api/v1/admin/dlq/{job_id}/requeue", handle_dlq_requeue_job)
    app.router.add_get("/api/v1/openapi.json", handle_openapi)
    app.router.add_get("/api/v1/me", handle_me)
    app.router.add_get("/", handle_page)
    app.router.add_get("/ui/{name:.+}", handle_asset)
    app.router.add_get("/live", handle_live)
    app.router.add_get("/ready", handle_ready)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    return app


@contextlib.asynccontextmanager
async def _resources(settings: GatewaySettings) -> AsyncIterator[Deps]:
    storage = open_storage(settings, fsync=settings.storage_fsync)
    try:
        removed = await storage.remove_stale_temp(settings.sweep_min_age_seconds)
    except StorageUnavailable as error:  # /ready says so; the sweeper tries again later
        log.warning("storage unreachable at start", error=str(error))
    else:
        if removed.files or removed.uploads:
            log.info("removed stale uploads", files=removed.files, uploads=removed.uploads)
    async with contextlib.AsyncExitStack() as closing, open_pool(settings) as pool:
        closing.push_async_callback(storage.close)
        bus = Bus(settings)
        await bus.start(wait=5.0)
        backpressure = Backpressure(settings, pool, storage)
        with untraced():
            await backpressure.refresh()
        relay = OutboxRelay(pool, bus) if settings.outbox_relay_enabled else None
        with untraced():  # background loops: no trace per poll (common.telemetry)
            tasks = [asyncio.create_task(backpressure.run(), name="backpressure")]
            if relay is not None:
                tasks.append(asyncio.create_task(relay.run(), name="outbox-relay"))
            if settings.sweep_interval_seconds > 0:
                sweeper = Sweeper(pool, storage, settings.sweep_min_age_seconds)
                sweeps = sweeper.run(settings.sweep_interval_seconds)
                tasks.append(asyncio.create_task(sweeps, name="storage-sweeper"))
            if settings.retention_interval_seconds > 0:
                runs = Retention(pool, settings.retention_policy).every(
                    settings.retention_interval_seconds,
                    apply=settings.retention_mode == "delete",
                    wake=relay.wake if relay is not None else lambda: None,
                )
                tasks.append(asyncio.create_task(runs, name="retention"))
        if settings.dlq_recorder_enabled:
            recorder = DeadLetterRecorder(bus, pool, bus.specs)
            tasks.append(asyncio.create_task(_start_when_connected(bus, recorder)))
        try:
            commands = RpcClient(
                bus,
                cluster_command_queue(settings.bus_queue_prefix),
                timeout=settings.cluster_command_timeout_s,
            )
            text_embeddings = TextEmbedClient(bus, timeout=settings.search_embed_timeout_s)
            yield Deps(
                settings,
                pool,
                bus,
                storage,
                backpressure,
                relay,
                ingest_commit(pool),
                commands,
                text_embeddings,
                ImageEmbedClient(bus, timeout=settings.search_embed_timeout_s * 2),
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await bus.close()


async def _start_when_connected(bus: Bus, recorder: DeadLetterRecorder) -> None:
    await bus.wait_connected(timeout=float("inf"))
    await recorder.start()
