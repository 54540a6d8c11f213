"""Upload and job status as pure functions of their content's stages."""

from __future__ import annotations

from collections.abc import Iterable

from common.stages import Stage

# The stage at which content of each kind is fully processed.
DONE_STAGE = {"image": Stage.CLUSTERED, "video": Stage.CLUSTERED, "json": Stage.STORED}


def upload_status(kind: str, stage: str) -> str:
    """queued, processing, done or failed."""
    if stage == Stage.FAILED:
        return "failed"
    if stage == DONE_STAGE.get(kind):
        return "done"
    if stage == Stage.INGESTED:
        return "queued"
    return "processing"


def job_status(statuses: Iterable[str]) -> str:
    """queued, processing, done, failed or partial (some failed, the rest done)."""
    found = set(statuses)
    if not found:
        return "queued"
    if found == {"done"}:
        return "done"
    if found == {"failed"}:
        return "failed"
    if found == {"done", "failed"}:
        return "partial"
    if found == {"queued"}:
        return "queued"
    return "processing"


def trace_url(template: str | None, trace_id: str | None, sampled: bool | None) -> str | None:
    """The trace UI's link for a recorded trace; None for one sampling left out (or unknown)."""
    if template is None or trace_id is None or sampled is False:
        return None
    return template.replace("{trace_id}", trace_id)
