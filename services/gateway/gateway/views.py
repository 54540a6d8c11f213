"""Job status and stored objects."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from common.messages import JsonIngested
from common.topology import spec_of
from gateway.auth import bound_owner
from gateway.content import serve_object
from gateway.deps import DEPS, Deps
from gateway.errors import ApiError
from gateway.repo.objects import document_of, job_with_uploads, thumbnail_of, upload_with_content
from gateway.repo.scope import OwnerScope
from gateway.status import job_status, trace_url, upload_status

# Stored bytes are shown inline only as types a browser renders passively (the image and video
# types ingest accepts); anything else (SVG, HTML, XML, a type this list does not know) is a
# download, so stored content never runs as a page of this origin. Every answer is nosniff.
INLINE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/apng",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/tiff",
        "image/heic",
        "image/heif",
        "image/avif",
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "video/x-matroska",
        "video/x-msvideo",
    }
)


# Stored bytes may be kept by a browser or a proxy only if it asks again before each use (the
# ETag makes that a 304): an upload deleted since is a 404, never a copy from a cache.
REVALIDATE = {"Cache-Control": "private, no-cache"}


def parse_id(request: web.Request, name: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise ApiError(400, f"{what} must be a UUID") from None


def scope(request: web.Request) -> OwnerScope:
    """What the caller's key may see: its owner's rows, or everyone's for an unbound key."""
    return OwnerScope(bound_owner(request))


def json_queue(deps: Deps) -> str:
    """The schemer's queue: its dead letters fail the JSON uploads of their job."""
    return spec_of(deps.bus.specs, "schemer", JsonIngested.routing_key).name


def visible(row: Any) -> Any:
    """The upload's row, or 404 when the caller's scope holds none (another owner's upload
    is as good as absent: its existence is not confirmed)."""
    if row is None:
        raise ApiError(404, "object not found")
    return row


async def handle_job_status(request: web.Request) -> web.Response:
    """Overall status derived from the stages of the job's content, and a row per upload."""
    job_id = parse_id(request, "job_id", "job id")
    deps = request.app[DEPS]
    rows = await job_with_uploads(deps.pool, scope(request), job_id, json_queue(deps))
    if not rows:
        raise ApiError(404, "job not found")
    uploads = []
    for row in rows:
        status = upload_status(row["kind"], row["stage"])
        uploads.append(
            {
                "system_id": str(row["upload_id"]),
                "filename": row["filename"],
                "kind": row["kind"],
                "mime_type": row["mime_type"],
                "size_bytes": row["size_bytes"],
                "sha256": row["sha256"],
                "status": status,
                "stage": row["stage"],
                "error": row["error"],
                "updated_at": row["stage_updated_at"].isoformat(),
                **({"document": row["document"]} if row["kind"] == "json" else {}),
            }
        )
    first = rows[0]
    counts: dict[str, int] = {}
    for upload in uploads:
        counts[upload["status"]] = counts.get(upload["status"], 0) + 1
    return web.json_response(
        {
            "job_id": str(job_id),
            "status": job_status(u["status"] for u in uploads),
            "owner": first["owner"],
            "created_at": first["created_at"].isoformat(),
            "trace_id": first["trace_id"],
            # False: sampling left this trace out; a tracing backend will not have it.
            "trace_sampled": first["trace_sampled"],
            "trace_url": trace_url(
                deps.settings.trace_ui_url, first["trace_id"], first["trace_sampled"]
            ),
            "timeline": f"/api/v1/ingest/{job_id}/timeline",
            "progress": {"total": len(uploads), **counts},
            "uploads": uploads,
        }
    )


def _object_json(row: Any) -> dict[str, Any]:
    return {
        "system_id": str(row["upload_id"]),
        "job_id": str(row["job_id"]),
        "owner": row["owner"],
        "filename": row["filename"],
        "comments": row["comments"],
        "created_at": row["created_at"].isoformat(),
        "content_id": str(row["content_id"]),
        "sha256": row["sha256"],
        "kind": row["kind"],
        "mime_type": row["mime_type"],
        "size_bytes": row["size_bytes"],
        "status": upload_status(row["kind"], row["stage"]),
        "stage": row["stage"],
        "error": row["error"],
        "width": row["width"],
        "height": row["height"],
        "format": row["format"],
        "tags": list(row["tags"] or []),
        "cluster_id": str(row["cluster_id"]) if row["cluster_id"] else None,
        # Why it sits where it sits: the model that embedded it, and the cluster it is in.
        "embeddings": row["embeddings"],
        "cluster": (
            {"id": str(row["cluster_id"]), "name": row["cluster_name"]}
            if row["cluster_id"]
            else None
        ),
        "near_duplicate_of": str(row["near_duplicate_of"]) if row["near_duplicate_of"] else None,
        "analysis": row["analysis"],
        **({"document": row["document"]} if row["kind"] == "json" else {}),
    }


async def handle_object(request: web.Request) -> web.Response:
    upload_id = parse_id(request, "object_id", "object id")
    deps = request.app[DEPS]
    row = visible(await upload_with_content(deps.pool, scope(request), upload_id, json_queue(deps)))
    return web.json_response(_object_json(row))


async def handle_object_content(request: web.Request) -> web.StreamResponse:
    """The stored bytes (media, streamed from storage) or the JSON document."""
    deps = request.app[DEPS]
    upload_id = parse_id(request, "object_id", "object id")
    row = visible(await upload_with_content(deps.pool, scope(request), upload_id, json_queue(deps)))
    if row["kind"] == "json":
        document = await document_of(deps.pool, scope(request), upload_id)
        return web.Response(text=document, content_type="application/json", headers=REVALIDATE)
    inline = row["mime_type"] in INLINE_TYPES
    content_type = row["mime_type"] if inline else "application/octet-stream"
    headers = dict(REVALIDATE)
    if row["filename"] or not inline:
        headers["Content-Disposition"] = _disposition(row["filename"], inline)
    return await serve_object(
        request,
        deps.storage,
        row["storage_key"],
        content_type=content_type,
        headers=headers,
        missing="the stored file is missing",
        presigned_seconds=deps.settings.s3_presigned_read_seconds,
    )


async def handle_object_thumbnail(request: web.Request) -> web.StreamResponse:
    """The 256-px JPEG thumbnail the embedder made; 404 until there is one."""
    deps = request.app[DEPS]
    upload_id = parse_id(request, "object_id", "object id")
    row = visible(await thumbnail_of(deps.pool, scope(request), upload_id))
    if row["thumbnail_key"] is None:
        raise ApiError(404, "this object has no thumbnail (yet)")
    return await serve_object(
        request,
        deps.storage,
        row["thumbnail_key"],
        content_type="image/jpeg",
        headers=REVALIDATE,
        missing="the stored thumbnail is missing",
    )


def _disposition(filename: str | None, inline: bool) -> str:
    from urllib.parse import quote

    kind = "inline" if inline else "attachment"
    if not filename:
        return kind
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
