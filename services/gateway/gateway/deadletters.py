"""Dead letters: list, inspect, requeue and purge what the recorder stored.

A requeue puts the original message back on the queue that parked it, with a fresh attempt
count, through the outbox in the same transaction that sets its content back on its way:
a crash strands nothing, and the content's stage never says `failed` while it is retried.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, cast, get_args

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.stages import Stage
from gateway.auth import bound_owner
from gateway.deps import DEPS
from gateway.errors import ApiError, invalid
from gateway.jsonbody import read_json
from gateway.repo import deadletters as dead_letters
from gateway.repo.scope import OwnerScope
from gateway.views import parse_id

# The stage a content goes back to when a message of this service is requeued.
RETRY_STAGE = {
    "embedder": Stage.INGESTED,
    "clusterer": Stage.EMBEDDED,
    "schemer": Stage.INGESTED,
}
MAX_BODY = 16 * 1024
ASK_ALL = 'to requeue every parked dead letter, send the JSON body {"all": true}'


class RequeueAll(BaseModel):
    """The body of POST /api/v1/admin/dlq/requeue: requeuing everything is said explicitly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: Literal[True] = Field(description="must be true: every parked dead letter")
    queue: str | None = Field(
        None, min_length=1, max_length=255, description="only those parked by this queue"
    )


def _json(row: Any) -> dict[str, Any]:
    def text(value: Any) -> str | None:
        return str(value) if value is not None else None

    return {
        "id": row["id"],
        "job_id": text(row["job_id"]),
        "upload_id": text(row["upload_id"]),
        "content_id": text(row["content_id"]),
        "message_id": row["message_id"],
        "queue": row["queue"],
        "routing_key": row["routing_key"],
        "error": row["error"],
        "attempts": row["attempts"],
        "failed_at": row["created_at"].isoformat(),
        "requeued_at": row["requeued_at"].isoformat() if row["requeued_at"] else None,
    }


def _state(request: web.Request) -> dead_letters.State:
    state = request.query.get("state", "parked")
    for known in get_args(dead_letters.State):
        if state == known:
            return cast(dead_letters.State, known)
    raise ApiError(400, "state must be parked, requeued or all")


def _scope(request: web.Request) -> OwnerScope:
    return OwnerScope(bound_owner(request))


def _int(request: web.Request, name: str, default: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not 0 <= value <= high or (name == "limit" and value == 0):
        raise ApiError(400, f"{name} must be between {int(name == 'limit')} and {high}")
    return value


async def handle_dlq_list(request: web.Request) -> web.Response:
    """Parked messages, newest first, as a JSON array; `queue`, `state`, `limit`, `offset`."""
    rows = await dead_letters.list_dead_letters(
        request.app[DEPS].pool,
        _scope(request),
        _state(request),
        request.query.get("queue"),
        _int(request, "limit", 100, 1000),
        _int(request, "offset", 0, 1_000_000),
    )
    return web.json_response([_json(r) for r in rows])


async def handle_dlq_job(request: web.Request) -> web.Response:
    """Every dead letter of one job (parked or requeued), with the message body and, for an
    unexpected failure, the handler's traceback."""
    job_id = parse_id(request, "job_id", "job id")
    rows = await dead_letters.dead_letters_of_job(request.app[DEPS].pool, _scope(request), job_id)
    if not rows:
        raise ApiError(404, "no dead letters for this job")
    return web.json_response(
        [{**_json(r), "body": _body(r["body"]), "traceback": r["traceback"]} for r in rows]
    )


def _body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


async def _optional_json(request: web.Request) -> Any:
    """The JSON body, or None when there is none."""
    if not request.body_exists:
        return None
    return await read_json(request, MAX_BODY)


async def handle_dlq_requeue_job(request: web.Request) -> web.Response:
    """Requeue one job's parked dead letters; no body, or an empty JSON object."""
    job_id = parse_id(request, "job_id", "job id")
    if await _optional_json(request) not in (None, {}):
        raise ApiError(400, "this requeue takes no body (or an empty JSON object)")
    count = await _requeue(request, job_id=job_id)
    if count == 0:
        raise ApiError(404, "no parked dead letters for this job")
    return web.json_response({"requeued": count})


async def handle_dlq_requeue_all(request: web.Request) -> web.Response:
    """Requeue every parked dead letter (of one queue, with `queue`): `{"all": true}`."""
    body = await _optional_json(request)
    if body is None:
        raise ApiError(400, ASK_ALL)
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object; {ASK_ALL}")
    try:
        asked = RequeueAll.model_validate(body)
    except ValidationError as error:
        details = invalid("requeue", error).details
        raise ApiError(400, f"invalid requeue request; {ASK_ALL}", details) from None
    count = await _requeue(request, queue=asked.queue)
    return web.json_response({"requeued": count})


async def _requeue(
    request: web.Request, *, job_id: uuid.UUID | None = None, queue: str | None = None
) -> int:
    deps = request.app[DEPS]
    specs = {s.name: s for s in deps.bus.specs}

    def retry_stage(queue_name: str) -> str | None:
        spec = specs.get(queue_name)
        return RETRY_STAGE.get(spec.service) if spec is not None and spec.fails_content else None

    count = await dead_letters.requeue(
        deps.pool, _scope(request), retry_stage, job_id=job_id, queue=queue
    )
    deps.wake_relay()
    return count


async def handle_dlq_purge(request: web.Request) -> web.Response:
    """Forget every parked dead letter (their content stays failed)."""
    deleted = await dead_letters.purge(request.app[DEPS].pool, _scope(request))
    return web.json_response({"purged": deleted})


async def handle_dlq_purge_job(request: web.Request) -> web.Response:
    """Forget every dead letter of one job (parked or requeued)."""
    job_id = parse_id(request, "job_id", "job id")
    deleted = await dead_letters.purge(request.app[DEPS].pool, _scope(request), job_id)
    if not deleted:
        raise ApiError(404, "no dead letters for this job")
    return web.json_response({"purged": deleted})
