"""POST /api/v1/ingest: stream uploads to storage, record them in one transaction, answer 202."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import Histogram

from common.storage import Storage, StorageUnavailable, Writer, key_for
from common.telemetry import current_trace, set_attributes
from gateway.auth import OPEN, Principal, principal
from gateway.deps import DEPS, Deps
from gateway.errors import ApiError, no_nul, request_id
from gateway.ingest_commit import PendingIngest
from gateway.jsonbody import parse_json
from gateway.repo import (
    IdempotencyHit,
    IngestRecord,
    IngestRequest,
    NewUpload,
    write_ingest_with_key,
)
from gateway.settings import GatewaySettings
from gateway.status import job_status, upload_status
from gateway.upload_rules import (
    IMAGE_TYPES,
    SNIFF_BYTES,
    VIDEO_TYPES,
    camera_raw,
    check_collection,
    check_comments,
    check_idempotency_key,
    check_owner,
    clean_filename,
    fingerprint,
    json_documents,
    limit_for,
    parse_disposition,
    sniff,
    text_field,
    too_large,
)
from gateway.uploads import UPLOAD_SLOTS, client_aborted, read_deadline

log = structlog.get_logger(__name__)
SUPPORTED = sorted(IMAGE_TYPES | VIDEO_TYPES | {"application/json"})

INGEST_LATENCY = Histogram(
    "ingest_latency_seconds",
    "Time from request start to 202, for accepted ingests.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

FILE_FIELDS = frozenset({"files[]", "files", "file"})
TEXT_FIELDS = frozenset({"owner", "comments", "idempotency_key", "collection"})
CHUNK = 262144


@dataclass
class _Media:
    writer: Writer
    kind: str
    mime_type: str
    filename: str | None


@dataclass
class Intake:
    """What one request brought, before it is recorded; `abort` removes every trace of it."""

    settings: GatewaySettings
    storage: Storage
    fields: dict[str, str] = field(default_factory=dict)
    entries: list[_Media | tuple[bytes, str | None]] = field(default_factory=list)

    def _count(self, more: int) -> None:
        if len(self.entries) + more > self.settings.max_json_items:
            raise ApiError(
                413, f"too many uploads in one request (limit {self.settings.max_json_items})"
            )

    def add_json(
        self, data: bytes, what: str, filename: str | None, envelope: bool = False
    ) -> None:
        value = parse_json(data, what, self.settings.max_json_depth)
        documents = json_documents(value, what, self.settings, envelope)
        self._count(len(documents))
        self.entries.extend((doc, filename) for doc in documents)

    async def add_file(self, part: BodyPartReader, raw_filename: str | None) -> None:
        files = sum(isinstance(e, _Media) for e in self.entries)
        if files >= self.settings.max_files_per_request:
            raise ApiError(413, f"too many files (limit {self.settings.max_files_per_request})")
        filename = clean_filename(raw_filename)
        label = f"file {filename!r}" if filename else "file"
        head = bytearray()
        while len(head) < SNIFF_BYTES and (chunk := await part.read_chunk(CHUNK)):
            head += chunk
        if not head:
            raise ApiError(400, f"{label} is empty")
        raw = camera_raw(bytes(head))
        if raw is not None:
            raise ApiError(
                415,
                f"{label} is a camera RAW file ({raw}), which is not accepted: convert it to"
                " JPEG, HEIC, AVIF, PNG or TIFF first",
                {"type": raw, "supported": SUPPORTED},
            )
        sniffed = sniff(bytes(head))
        if sniffed is None:
            raise ApiError(415, f"{label} is of an unsupported type", {"supported": SUPPORTED})
        limit = limit_for(sniffed.kind, self.settings)
        if sniffed.kind == "json":
            data = bytes(head) + await _read_bounded(part, limit - len(head), label, limit)
            self.add_json(data, label, filename)
            return
        self._count(1)
        media = _Media(self.storage.writer(), sniffed.kind, sniffed.mime_type, filename)
        self.entries.append(media)
        if len(head) > limit:
            raise too_large(label, limit)
        await media.writer.write(bytes(head))
        while chunk := await part.read_chunk(CHUNK):
            if media.writer.size + len(chunk) > limit:
                raise too_large(label, limit)
            await media.writer.write(chunk)

    def uploads(self) -> list[NewUpload]:
        """The uploads to record; media are hashed but not yet given their content name."""
        uploads = []
        for entry in self.entries:
            if isinstance(entry, _Media):
                sha = entry.writer.sha256
                uploads.append(
                    NewUpload(
                        sha,
                        entry.kind,
                        entry.mime_type,
                        entry.writer.size,
                        key_for(sha),
                        entry.filename,
                    )
                )
            else:
                doc, filename = entry
                sha = hashlib.sha256(doc).hexdigest()
                uploads.append(
                    NewUpload(sha, "json", "application/json", len(doc), None, filename, doc)
                )
        return uploads

    async def place(self) -> None:
        """Make media durable (a filesystem store also gives them their content names)."""
        await asyncio.gather(*(e.writer.commit() for e in self.entries if isinstance(e, _Media)))

    async def ensure_placed(self) -> None:
        """Under the objects' locks: give media their content names where they have none
        (a large S3 upload's copy), or again where the sweeper removed one since `place`."""
        await asyncio.gather(
            *(e.writer.ensure_placed() for e in self.entries if isinstance(e, _Media))
        )

    async def place_locked(self) -> None:
        """`place` and `ensure_placed` at once, for a caller holding the objects' locks."""
        await self.place()
        await self.ensure_placed()

    def kinds(self) -> set[str]:
        """The kinds of upload this request brought (image, video, json)."""
        return {e.kind if isinstance(e, _Media) else "json" for e in self.entries}

    async def abort(self) -> None:
        """Remove what the uploads left but their content (temp files, parts); shielded, so
        that a request cancelled mid-way still cleans up."""
        aborts = [e.writer.abort() for e in self.entries if isinstance(e, _Media)]
        if aborts:
            await asyncio.shield(asyncio.gather(*aborts))


async def _read_bounded(part: BodyPartReader, budget: int, label: str, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        data += chunk
        if len(data) > budget:
            raise too_large(label, limit)
    return bytes(data)


async def _read_text(part: BodyPartReader, name: str, limit: int) -> str:
    return text_field(await _read_bounded(part, limit, f"field {name!r}", limit), name)


async def _read_multipart(request: web.Request, intake: Intake) -> None:
    settings = intake.settings
    reader = await request.multipart()
    # Every file, a few fields, and some slack: thousands of tiny parts are refused early.
    max_parts = settings.max_files_per_request + 2 * (len(TEXT_FIELDS) + 1)
    parts = 0
    while (part := await reader.next()) is not None:
        parts += 1
        if parts > max_parts:
            raise ApiError(413, f"too many parts in the form (limit {max_parts})")
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "nested multipart bodies are not supported")
        name, filename = parse_disposition(part.headers.get(hdrs.CONTENT_DISPOSITION, ""))
        name = name or ""
        if name in FILE_FIELDS:
            await intake.add_file(part, filename)
        elif name in TEXT_FIELDS:
            intake.fields[name] = await _read_text(part, name, settings.max_field_bytes)
        elif name == "payload":
            limit = settings.max_json_bytes
            data = await _read_bounded(part, limit, "payload", limit)
            if data.strip():
                intake.add_json(data, "payload", None, envelope=True)
        else:
            raise ApiError(
                400,
                f"unknown form field {name!r}",
                {"allowed": sorted(FILE_FIELDS | TEXT_FIELDS | {"payload"})},
            )


async def _read_json_body(request: web.Request, intake: Intake) -> None:
    limit = intake.settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise too_large("JSON body", limit)
    data = bytearray()
    while chunk := await request.content.read(CHUNK):
        data += chunk
        if len(data) > limit:
            raise too_large("JSON body", limit)
    if not data.strip():
        raise ApiError(400, "the request body is empty")
    intake.add_json(bytes(data), "JSON body", None, envelope=True)


async def _read_urlencoded(request: web.Request, intake: Intake) -> None:
    """A form without files: payload and the text fields (bounded by client_max_size)."""
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise too_large("form body", intake.settings.max_json_bytes) from None
    for name in form:
        if name not in TEXT_FIELDS | {"payload"}:
            raise ApiError(400, f"unknown form field {name!r}")
    for name in TEXT_FIELDS:
        value = form.get(name)
        if isinstance(value, str):
            intake.fields[name] = no_nul(value, f"field {name!r}")
    payload = form.get("payload")
    if isinstance(payload, str) and payload.strip():
        intake.add_json(payload.encode(), "payload", None, envelope=True)


def _response(record: IngestRecord, rid: str) -> dict[str, Any]:
    statuses = [upload_status(kind, stage) for kind, stage in record.stages]
    return {
        "job_id": str(record.job_id),
        "system_ids": [str(u) for u in record.upload_ids],
        "status": job_status(statuses),
        "request_id": rid,
        "created_at": record.created_at.isoformat(),
    }


async def handle_ingest(request: web.Request) -> web.Response:
    """Accept files and JSON; 202 once everything is durable and its events are queued."""
    deps = request.app[DEPS]
    deps.backpressure.check()
    slots = request.app[UPLOAD_SLOTS]
    slots.acquire()
    start = time.perf_counter()
    received_at = datetime.now(UTC)
    intake = Intake(deps.settings, deps.storage)
    try:
        async with read_deadline(request, deps.settings):
            await _read_request(request, intake)
        for name in TEXT_FIELDS:  # a form field wins over the query parameter of its name
            if name in request.query and name not in intake.fields:
                intake.fields[name] = no_nul(request.query[name], f"parameter {name!r}")
        if not intake.entries:
            raise ApiError(400, "nothing to ingest: send files[], a payload or a JSON body")
        deps.backpressure.check_events(intake.kinds())
        caller = principal(request)
        owner = _owner(caller, intake.fields.get("owner"))
        comments = check_comments(intake.fields.get("comments"))
        collection = check_collection(intake.fields.get("collection"))
        key = check_idempotency_key(
            intake.fields.get("idempotency_key") or request.headers.get("Idempotency-Key")
        )
        # Idempotency keys belong to the caller: its API key, or without keys its owner.
        scope = owner if caller is OPEN else f"key:{caller.key_id}"
        fields = IngestFields(owner, comments, collection, received_at)
        response = await _record(request, deps, intake, fields, key, scope)
    finally:
        await intake.abort()  # removes temp files of anything not placed; placed files stay
        slots.release()
    INGEST_LATENCY.observe(time.perf_counter() - start)
    deps.wake_relay()
    return response


def _owner(caller: Principal, given: str | None) -> str:
    """The owner of the uploads: the key's, when it is bound to one (a form may not differ)."""
    if caller.owner is None:
        return check_owner(given)
    if given and given.strip() and given.strip() != caller.owner:
        raise ApiError(403, "this key uploads only as its own owner", {"owner": caller.owner})
    return caller.owner


async def _read_request(request: web.Request, intake: Intake) -> None:
    # Parsed by hand: aiohttp's content_type goes through the email package, a hot spot here.
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    try:
        if not request.can_read_body:
            raise ApiError(400, "nothing to ingest: send files[], a payload or a JSON body")
        if ctype == "multipart/form-data":
            await _read_multipart(request, intake)
        elif ctype == "application/json" or ctype.endswith("+json"):
            await _read_json_body(request, intake)
        elif ctype == "application/x-www-form-urlencoded":
            await _read_urlencoded(request, intake)
        else:
            raise ApiError(
                415,
                f"unsupported request content type {ctype!r}",
                {"supported": ["multipart/form-data", "application/json"]},
            )
    # aiohttp's multipart parser on bad input: ValueError, AssertionError, or an invalid
    # part header (HttpProcessingError) — found by fuzzing the API from its OpenAPI document.
    except (ValueError, AssertionError, HttpProcessingError) as error:
        raise ApiError(400, f"malformed request body: {error}") from None
    except ConnectionResetError as error:  # the client went away (aiohttp's errors are these)
        raise client_aborted(request, error) from None
    except (OSError, StorageUnavailable) as error:  # ENOSPC and friends, or S3 refusing
        raise storage_refused(error, intake.settings) from None


def storage_refused(error: OSError | StorageUnavailable, settings: GatewaySettings) -> ApiError:
    """The 503 for a store that refused an upload's bytes. The error names paths or keys: it
    goes to the log; the client gets its kind only."""
    log.warning("storage refused an upload", error=str(error))
    if isinstance(error, StorageUnavailable):
        reason = "the object store is unavailable"
    elif error.errno:
        reason = os.strerror(error.errno)
    else:
        reason = type(error).__name__
    return ApiError(
        503,
        "storage cannot accept the upload now",
        {"reason": reason},
        headers={"Retry-After": str(settings.retry_after_seconds)},
    )


@dataclass(frozen=True)
class IngestFields:
    """The checked text fields of one request."""

    owner: str
    comments: str | None
    collection: str | None
    received_at: datetime


async def _record(
    request: web.Request,
    deps: Deps,
    intake: Intake,
    fields: IngestFields,
    key: str | None,
    scope: str,
) -> web.Response:
    rid = request_id(request)
    uploads = intake.uploads()
    request_hash = fingerprint(
        fields.owner,
        fields.comments,
        [(u.filename, u.sha256) for u in uploads],
        fields.collection,
    )
    idempotency = (scope, key, request_hash) if key else None
    here = current_trace()
    request_record = IngestRequest(
        fields.owner,
        fields.comments,
        rid,
        here.trace_id if here else None,
        uploads,
        fields.collection,
        span_id=here.span_id if here else None,
        trace_sampled=here.sampled if here else None,
        received_at=fields.received_at,
    )
    # Every later line of this request names the job (the request's task has its own context).
    structlog.contextvars.bind_contextvars(job_id=str(request_record.job_id))
    set_attributes(
        {
            "mammothbox.job_id": str(request_record.job_id),
            "mammothbox.upload_ids": [str(u) for u in request_record.upload_ids],
            "mammothbox.uploads": len(uploads),
        }
    )
    try:
        if idempotency is None:
            # Files first, then the rows that make them visible (in a shared group commit,
            # which re-places under the objects' locks what the sweeper took meanwhile).
            await intake.place()
            record = await deps.ingest_commit.submit(
                PendingIngest(request_record, intake.ensure_placed)
            )
        else:
            async with deps.pool.acquire() as conn:
                record = await write_ingest_with_key(
                    conn,
                    request_record,
                    idempotency,
                    lambda r: _response(r, rid),
                    intake.place_locked,
                )
    except StorageUnavailable as error:  # placing the bytes, inside or before the transaction
        raise storage_refused(error, deps.settings) from None
    except IdempotencyHit as hit:
        if hit.request_hash != request_hash:
            raise ApiError(
                409,
                "idempotency_key was already used for a different request",
                existing_job_id=str(hit.job_id),
            ) from None
        return web.json_response(hit.response, status=202, headers=_location(hit.job_id))
    # A database that is down answers 503 through the request middleware (gateway/errors.py).
    return web.json_response(_response(record, rid), status=202, headers=_location(record.job_id))


def _location(job_id: object) -> dict[str, str]:
    return {"Location": f"/api/v1/ingest/{job_id}/status"}
