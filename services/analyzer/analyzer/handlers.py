"""media.embedded -> Gemini (or the CLIP fallback) -> analysis stored once -> media.analyzed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog

from analyzer import repo
from analyzer.fallback import FALLBACK_MODEL, clip_analysis
from analyzer.images import for_vlm
from analyzer.settings import AnalyzerSettings
from analyzer.vlm import VLM_REQUESTS, GeminiVlm, VlmInvalid, VlmUnauthorized, VlmUnavailable
from common import tombstones
from common.consumer import Delivery, Permanent, Retryable
from common.labels import Labeler, LabelsUnavailable
from common.messages import MediaAnalyzed, MediaEmbedded
from common.stages import Stage
from common.storage import Storage, StorageError, StorageUnavailable
from common.worker import WorkerDeps

log = structlog.get_logger(__name__)
# The largest stored image the analyzer reads (the gateway takes at most MAX_IMAGE_BYTES).
MAX_SOURCE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class AnalyzerDeps(WorkerDeps):
    settings: AnalyzerSettings
    storage: Storage
    labeler: Labeler
    vlm: GeminiVlm | None  # None: VLM_ENABLED=false or no GEMINI_API_KEY


async def handle_embedded(deps: AnalyzerDeps, event: MediaEmbedded, delivery: Delivery) -> None:
    """Analyse one content once; a redelivery re-publishes what is stored."""
    row = await repo.content(deps.pool, event.content_id, event.model_id)
    if row is None:
        await tombstones.missing(deps.pool, event.content_id)
        return
    if row.analyzed_at is None:
        if row.stage == Stage.FAILED:
            return  # nothing to analyse
        analysis, model = await _analyse(deps, row, event.model_id)
        if not await repo.save(deps.pool, row.id, analysis, model):
            log.info("analysis stored meanwhile by another delivery", content_id=str(row.id))
        row = await repo.content(deps.pool, event.content_id, event.model_id)
        if row is None:  # deleted while it was being analysed
            await tombstones.missing(deps.pool, event.content_id)
            return
    await _publish(deps, event, row.analysis or {}, row.analysis_model or "")


async def _analyse(
    deps: AnalyzerDeps, row: repo.ContentToAnalyse, model_id: str
) -> tuple[dict[str, Any], str]:
    if deps.vlm is not None:
        try:
            jpeg = await _image(deps, row)
            result = await deps.vlm.analyze(jpeg)
            return result.stored(deps.vlm.model), deps.vlm.model
        except (VlmUnauthorized, VlmInvalid) as error:
            log.warning("VLM analysis unusable; falling back", error=str(error))
        except VlmUnavailable as error:
            if not deps.settings.vlm_fallback_to_clip:
                raise Retryable(f"VLM unavailable: {error}") from None
            log.warning("VLM unavailable; falling back", error=str(error))
        except _Unreadable as error:
            log.warning("image unreadable for the VLM; falling back", error=str(error))
    if row.embedding is None:
        raise Permanent(f"content {row.id} has no {model_id} embedding to fall back on")
    try:
        analysis = await clip_analysis(
            deps.labeler,
            model_id,
            row.embedding,
            max_tags=deps.settings.fallback_max_tags,
            min_probability=deps.settings.fallback_min_probability,
        )
    except LabelsUnavailable as error:
        raise Retryable(f"no zero-shot labels yet: {error}") from None
    VLM_REQUESTS.labels("fallback").inc()
    return analysis, FALLBACK_MODEL


class _Unreadable(Exception):
    pass


async def _image(deps: AnalyzerDeps, row: repo.ContentToAnalyse) -> bytes:
    """The image to send: the stored file (a video sends its thumbnail), downscaled."""
    key = row.storage_key if row.kind == "image" else row.thumbnail_key
    if key is None:
        raise _Unreadable(f"content {row.id} has nothing to show")
    try:
        data = await deps.storage.read(key, limit=MAX_SOURCE_BYTES)
    except FileNotFoundError:
        raise _Unreadable(f"cannot read {key}: it is not in storage") from None
    except OSError as error:  # named by its key, never by where storage keeps it
        raise _Unreadable(f"cannot read {key}: {error.strerror or type(error).__name__}") from None
    except StorageError as error:  # too large; StorageUnavailable is retried, as any outage
        if isinstance(error, StorageUnavailable):
            raise
        raise _Unreadable(f"cannot read {key}: {error}") from None
    try:
        return await asyncio.to_thread(for_vlm, data, deps.settings.vlm_max_image_px)
    except (OSError, ValueError) as error:  # PIL's errors are OSError/ValueError subclasses
        raise _Unreadable(f"{type(error).__name__}: {error}") from None


async def _publish(
    deps: AnalyzerDeps, event: MediaEmbedded, analysis: dict[str, Any], model: str
) -> None:
    out = MediaAnalyzed(
        content_id=event.content_id,
        job_id=event.job_id,
        vlm_model=model[:200] or FALLBACK_MODEL,
        suggested_cluster_name=_text(analysis.get("suggested_cluster_name")),
        primary_category=_text(analysis.get("primary_category")),
        tags=[str(t)[:100] for t in analysis.get("tags") or []][:50],
    )
    await deps.bus.publish(out.routing_key, out.to_bytes(), message_id=str(out.message_id))


def _text(value: object) -> str | None:
    return str(value)[:500] if value else None
