"""Dead letters: list, inspect, requeue and purge what the recorder stored.

A requeue puts the original message back on the queue that parked it, with a fresh attempt
count, through the outbox in the same transaction that sets its content back on its way:
a crash strands nothing, and the content's stage never says `failed` while it is retried.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.outbox import OUTBOX_PARKING
from common.topology import ATTEMPT_HEADER, ERROR_HEADER, QueueSpec
from gateway.auth import bound_owner
from gateway.deps import DEPS
from gateway.errors import ApiError, invalid
from gateway.jsonbody import read_json
from gateway.views import parse_id

# The stage a content goes back to when a message of this service is requeued.
RETRY_STAGE = {"embedder": "ingested", "clusterer": "embedded", "schemer": "ingested"}
MAX_BODY = 16 * 1024
ASK_ALL = 'to requeue every parked dead letter, send the JSON body {"all": true}'


class RequeueAll(BaseModel):
    """The body of POST /api/v1/admin/dlq/requeue: requeuing everything is said explicitly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: Literal[True] = Field(description="must be true: every parked dead letter")
    queue: str | None = Field(
        None, min_length=1, max_length=255, description="only those parked by this queue"
    )


_COLUMNS = """d.id, d.message_id, d.job_id, d.content_id, d.queue, d.routing_key, d.error,
              d.attempts, d.created_at, d.requeued_at,
              (SELECT u.id FROM uploads u
               WHERE u.content_id = d.content_id AND u.job_id = d.job_id
               ORDER BY u.position LIMIT 1) AS upload_id"""


def _mine(placeholder: str) -> str:
    """Only dead letters of the caller's owner's jobs, when its key is bound to an owner."""
    return (
        f"({placeholder}::text IS NULL"
        f" OR d.job_id IN (SELECT id FROM jobs WHERE owner = {placeholder}))"
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


def _state(request: web.Request) -> str:
    state = request.query.get("state", "parked")
    if state not in ("parked", "requeued", "all"):
        raise ApiError(400, "state must be parked, requeued or all")
    return {"parked": "d.requeued_at IS NULL", "requeued": "d.requeued_at IS NOT NULL"}.get(
        state, "true"
    )


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
    queue = request.query.get("queue")
    rows = await request.app[DEPS].pool.fetch(
        f"""SELECT {_COLUMNS} FROM dead_letters d
            WHERE {_state(request)} AND ($1::text IS NULL OR d.queue = $1) AND {_mine("$4")}
            ORDER BY d.created_at DESC, d.id DESC LIMIT $2 OFFSET $3""",
        queue,
        _int(request, "limit", 100, 1000),
        _int(request, "offset", 0, 1_000_000),
        bound_owner(request),
    )
    return web.json_response([_json(r) for r in rows])


async def handle_dlq_job(request: web.Request) -> web.Response:
    """Every dead letter of one job (parked or requeued), with the message body."""
    job_id = parse_id(request, "job_id", "job id")
    rows = await request.app[DEPS].pool.fetch(
        f"""SELECT {_COLUMNS}, d.body FROM dead_letters d
            WHERE d.job_id = $1 AND {_mine("$2")}
            ORDER BY d.created_at, d.id""",
        job_id,
        bound_owner(request),
    )
    if not rows:
        raise ApiError(404, "no dead letters for this job")
    return web.json_response([{**_json(r), "body": _body(r["body"])} for r in rows])


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
    where = f"d.job_id = $1 AND {_mine('$2')}"
    count = await _requeue(request, where, job_id, bound_owner(request))
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
    where = f"{_mine('$1')} AND ($2::text IS NULL OR d.queue = $2)"
    count = await _requeue(request, where, bound_owner(request), asked.queue)
    return web.json_response({"requeued": count})


async def _requeue(request: web.Request, where: str, *args: Any) -> int:
    deps = request.app[DEPS]
    specs = {s.name: s for s in deps.bus.specs}
    async with deps.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"""SELECT d.id, d.message_id, d.queue, d.routing_key, d.body, d.headers::text AS h,
                       d.content_id
                FROM dead_letters d WHERE {where} AND d.requeued_at IS NULL
                ORDER BY d.id FOR UPDATE SKIP LOCKED""",
            *args,
        )
        for row in rows:
            await _requeue_one(conn, row, specs.get(row["queue"]))
    deps.wake_relay()
    return len(rows)


async def _requeue_one(conn: asyncpg.Connection, row: Any, spec: QueueSpec | None) -> None:
    headers = {
        k: v
        for k, v in orjson.loads(row["h"]).items()
        if k not in (ERROR_HEADER, ATTEMPT_HEADER, "x-death", "x-first-death-exchange",
                     "x-first-death-queue", "x-first-death-reason", "x-origin-queue")
    }  # fmt: skip
    stage = RETRY_STAGE.get(spec.service) if spec is not None and spec.fails_content else None
    if stage is not None and row["content_id"] is not None:
        await conn.execute(
            """UPDATE content SET stage = $2, error = NULL, stage_updated_at = now()
               WHERE id = $1 AND stage = 'failed'""",
            row["content_id"],
            stage,
        )
    # A new message id: the outbox keeps one row per message it ever sent. A row the relay
    # parked as unroutable is routed by its key again; any other goes back to its queue.
    await conn.execute(
        """INSERT INTO outbox (message_id, routing_key, queue, body, headers)
           VALUES ($1, $2, $3, $4, $5::text::jsonb)""",
        uuid.uuid4(),
        row["routing_key"] or "",
        None if row["queue"] == OUTBOX_PARKING else row["queue"],
        row["body"],
        orjson.dumps(headers).decode(),
    )
    await conn.execute("UPDATE dead_letters SET requeued_at = now() WHERE id = $1", row["id"])


async def handle_dlq_purge(request: web.Request) -> web.Response:
    """Forget every parked dead letter (their content stays failed)."""
    deleted = await request.app[DEPS].pool.fetchval(
        f"""WITH gone AS (DELETE FROM dead_letters d WHERE requeued_at IS NULL AND {_mine("$1")}
                          RETURNING 1)
            SELECT count(*) FROM gone""",
        bound_owner(request),
    )
    return web.json_response({"purged": deleted})


async def handle_dlq_purge_job(request: web.Request) -> web.Response:
    job_id = parse_id(request, "job_id", "job id")
    deleted = await request.app[DEPS].pool.fetchval(
        f"""WITH gone AS (DELETE FROM dead_letters d WHERE job_id = $1 AND {_mine("$2")}
                          RETURNING 1)
            SELECT count(*) FROM gone""",
        job_id,
        bound_owner(request),
    )
    if not deleted:
        raise ApiError(404, "no dead letters for this job")
    return web.json_response({"purged": deleted})
