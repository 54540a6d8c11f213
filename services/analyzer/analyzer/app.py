"""The analyzer as a worker: its deps (the VLM client with its limits, labels) and its queue."""

from __future__ import annotations

import structlog

from analyzer.handlers import AnalyzerDeps, handle_embedded
from analyzer.ratelimit import RateLimiter
from analyzer.settings import AnalyzerSettings
from analyzer.vlm import GeminiVlm
from common.embed_client import TextEmbedClient
from common.labels import Labeler
from common.messages import MediaEmbedded
from common.worker import Resources, Worker

log = structlog.get_logger(__name__)


def vlm_status(settings: AnalyzerSettings, vlm: GeminiVlm | None) -> str:
    """What /health says of the VLM."""
    if not settings.vlm_enabled:
        return "disabled"
    if vlm is None:
        return "no key"
    return vlm.status


async def setup(settings: AnalyzerSettings, base: Resources) -> AnalyzerDeps:
    """The VLM client (when usable) and the labeler of the CLIP fallback."""
    limiter = RateLimiter(base.pool, settings.vlm_rate_limit_per_minute, settings.vlm_rate_window_s)
    vlm = GeminiVlm(settings, limiter) if settings.vlm_usable else None
    if vlm is None:
        log.warning(
            "Gemini is off; every image gets the CLIP fallback",
            reason="VLM_ENABLED=false" if not settings.vlm_enabled else "no GEMINI_API_KEY",
        )
    else:
        base.stack.push_async_callback(vlm.close)
    labeler = Labeler(
        TextEmbedClient(base.bus, timeout=settings.label_timeout_s),
        settings.analysis_labels,
        settings.analysis_label_template,
    )
    return base.deps(
        AnalyzerDeps,
        settings,
        labeler=labeler,
        vlm=vlm,
    )


def _info(deps: AnalyzerDeps) -> dict[str, object]:
    settings = deps.settings
    return {
        "vlm": vlm_status(settings, deps.vlm),
        "vlm_model": settings.vlm_model,
        "vlm_fallback_to_clip": settings.vlm_fallback_to_clip,
        "vlm_rate_limit_per_minute": settings.vlm_rate_limit_per_minute,
        "vlm_concurrency": settings.vlm_concurrency,
    }


worker: Worker[AnalyzerSettings, AnalyzerDeps] = Worker("analyzer", setup)
worker.consume(
    {MediaEmbedded: handle_embedded},
    # Enough in flight to keep every VLM slot busy while others wait on the rate limit.
    prefetch=lambda deps: deps.settings.vlm_concurrency * 2,
)
worker.info(_info)
running = worker.running
