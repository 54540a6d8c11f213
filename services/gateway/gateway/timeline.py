"""GET /api/v1/ingest/{job_id}/timeline: where each upload is and where its time went.

Built from what the database records — the job (when the request arrived and was
committed), and the stage log every consumer writes (common/stage_log.py) — so it answers
without any tracing backend. `?format=text` gives the same as a plain-text table.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.deps import DEPS
from gateway.errors import ApiError
from gateway.repo.objects import job_with_uploads
from gateway.repo.timeline import stage_runs_of
from gateway.status import trace_url, upload_status
from gateway.views import json_queue, parse_id, scope

# The stages an upload goes through, in order, by what it is. A later upload of stored media
# also gets its folder link; its content's stages ran for the job that first stored it.
MEDIA_STAGES = ("embed", "cluster", "analyze")
JSON_STAGES = ("store",)
FORMATS = ("json", "text")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 6)


def _stage_json(run: Any, job_id: uuid.UUID, see_all: bool, now: datetime) -> dict[str, Any]:
    work = float(run["work_seconds"])
    queued = run["queued_at"] or run["started_at"]
    if run["outcome"] == "running":
        waited = _seconds(queued, run["last_started_at"])
        waited = None if waited is None else max(0.0, waited - work)
    else:
        total = _seconds(queued, run["finished_at"] or now)
        waited = None if total is None else max(0.0, total - work)
    shared = run["job_id"] is not None and run["job_id"] != job_id
    return {
        "stage": run["stage"],
        "service": run["service"],
        "queue": run["queue"],
        "outcome": run["outcome"],
        "attempts": run["attempts"],
        "queued_at": _iso(run["queued_at"]),
        "published_at": _iso(run["published_at"]),
        "started_at": _iso(run["started_at"]),
        "finished_at": _iso(run["finished_at"]),
        "wait_seconds": None if waited is None else round(waited, 6),
        "outbox_wait_seconds": _seconds(run["queued_at"], run["published_at"]),
        "work_seconds": round(work, 6),
        "error": run["error"],
        # Processed for the job that first stored this content (the same bytes, earlier).
        "shared": shared,
        # Another owner's trace is not this caller's to follow.
        "trace_id": run["trace_id"] if see_all or not shared else None,
    }


def _belongs(run: Any, upload: Any) -> bool:
    uploads = run["upload_ids"] or []
    if uploads:
        return upload["upload_id"] in uploads
    return run["content_id"] is not None and run["content_id"] == upload["content_id"]


def build_timeline(
    uploads: Sequence[Any],
    runs: Sequence[Any],
    *,
    see_all: bool,
    trace_template: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The timeline of one job from its upload rows (job_with_uploads) and stage rows."""
    now = now or datetime.now(UTC)
    first = uploads[0]
    job_id = first["job_id"]
    received, accepted = first["received_at"], first["created_at"]
    items = []
    for upload in uploads:
        status = upload_status(upload["kind"], upload["stage"])
        stages: list[dict[str, Any]] = [
            {
                "stage": "ingest",
                "service": "gateway",
                "outcome": "ok",
                "attempts": 1,
                "started_at": _iso(received),
                "finished_at": _iso(accepted),
                "wait_seconds": 0.0,
                "work_seconds": _seconds(received, accepted),
                "error": None,
                "shared": False,
                "trace_id": first["trace_id"],
            }
        ]
        stages += [_stage_json(r, job_id, see_all, now) for r in runs if _belongs(r, upload)]
        expected = JSON_STAGES if upload["kind"] == "json" else MEDIA_STAGES
        if upload["kind"] != "json" and upload["first_job_id"] != job_id:
            expected = (*expected, "link")
        seen = {s["stage"] for s in stages}
        for name in expected:
            if name not in seen:
                stages.append(
                    {"stage": name, "outcome": "skipped" if status == "failed" else "pending"}
                )
        ends = [s["finished_at"] for s in stages if s.get("finished_at")]
        items.append(
            {
                "system_id": str(upload["upload_id"]),
                "content_id": str(upload["content_id"]),
                "filename": upload["filename"],
                "kind": upload["kind"],
                "status": status,
                "stage": upload["stage"],
                "error": upload["error"],
                "elapsed_seconds": _seconds(received or accepted, datetime.fromisoformat(max(ends)))
                if ends
                else None,
                "stages": stages,
            }
        )
    return {
        "job_id": str(job_id),
        "received_at": _iso(received),
        "accepted_at": _iso(accepted),
        "trace_id": first["trace_id"],
        "trace_sampled": first["trace_sampled"],
        "trace_url": trace_url(trace_template, first["trace_id"], first["trace_sampled"]),
        "uploads": items,
    }


def _offset(origin: datetime | None, value: str | None) -> str:
    if origin is None or value is None:
        return "-"
    return f"{(datetime.fromisoformat(value) - origin).total_seconds():+.3f}s"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def render_text(timeline: dict[str, Any]) -> str:
    """The timeline as a plain-text table; times are offsets from the request's arrival."""
    origin_text = timeline["received_at"] or timeline["accepted_at"]
    origin = datetime.fromisoformat(origin_text) if origin_text else None
    sampled = {True: "recorded", False: "not sampled", None: "sampling not recorded"}[
        timeline["trace_sampled"]
    ]
    lines = [
        f"job {timeline['job_id']}  received {timeline['received_at'] or '-'}",
        f"trace {timeline['trace_id'] or '-'} ({sampled})"
        + (f"  {timeline['trace_url']}" if timeline["trace_url"] else ""),
    ]
    header = ("stage", "service", "outcome", "tries", "start", "end", "wait", "work", "error")
    for upload in timeline["uploads"]:
        lines += [
            "",
            f"upload {upload['system_id']}  {upload['filename'] or '-'}  ({upload['kind']})"
            f"  {upload['status']}  elapsed {_num(upload['elapsed_seconds'])}",
        ]
        table = [header]
        for s in upload["stages"]:
            name = s["stage"] + (" (shared)" if s.get("shared") else "")
            table.append(
                (
                    name,
                    s.get("service") or "-",
                    s["outcome"],
                    str(s.get("attempts") or "-"),
                    _offset(origin, s.get("started_at")),
                    _offset(origin, s.get("finished_at")),
                    _num(s.get("wait_seconds")),
                    _num(s.get("work_seconds")),
                    (s.get("error") or "")[:80].replace("\n", " "),
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )
    return "\n".join(lines) + "\n"


async def handle_timeline(request: web.Request) -> web.Response:
    job_id = parse_id(request, "job_id", "job id")
    wanted = request.query.get("format", "json")
    if wanted not in FORMATS:
        raise ApiError(400, "format must be json or text", {"format": wanted[:40]})
    deps = request.app[DEPS]
    caller = scope(request)
    uploads = await job_with_uploads(deps.pool, caller, job_id, json_queue(deps))
    if not uploads:
        raise ApiError(404, "job not found")
    runs = await stage_runs_of(deps.pool, job_id, [u["content_id"] for u in uploads])
    timeline = build_timeline(
        uploads, runs, see_all=not caller.bound, trace_template=deps.settings.trace_ui_url
    )
    if wanted == "text":
        return web.Response(text=render_text(timeline), content_type="text/plain")
    return web.json_response(timeline)
