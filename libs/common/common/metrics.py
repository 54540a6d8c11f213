"""Metrics every service shares, and the /metrics answer (off with METRICS_ENABLED=false).

Label sets are bounded (service, stage, queue, outcome, operation): never an id. Series that
a dashboard or an alert reads are created at start-up with their known labels, so they show
as zeros rather than missing until the first event.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

# What a consumer did with one delivery (common.consumer): handled, sent to a delay queue for
# another attempt, put back on its queue (the broker keeps it), held while a destination
# refuses publishes, or parked in the dead-letter queue.
OUTCOMES = ("ok", "retried", "requeued", "held", "dead_lettered")

JOBS_PROCESSED = Counter(
    "jobs_processed_total", "Messages handled, by service and outcome.", ["service", "outcome"]
)
JOB_DURATION = Histogram(
    "job_processing_duration_seconds",
    "Time spent handling one message, by service and stage.",
    ["service", "stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def declare_stage(service: str, stage: str) -> None:
    """Create a consuming stage's series at zero."""
    for outcome in OUTCOMES:
        JOBS_PROCESSED.labels(service, outcome)
    JOB_DURATION.labels(service, stage)


def metrics_response(enabled: bool) -> web.Response:
    """The Prometheus text exposition of this process, or 404 when metrics are off."""
    if not enabled:
        return web.json_response(
            {"error": "metrics are disabled (METRICS_ENABLED=false)"}, status=404
        )
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response
