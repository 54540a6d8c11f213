"""Re-clustering proposals: listed from the database; accepted, dismissed or asked for through
the clusterer's command RPC (as cluster changes are). For an admin key not bound to an owner:
proposals name every owner's clusters and members.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.cluster_commands import ClusterCommandReply, ProposalCommand, ReclusterCommand
from common.rpc import RpcTimeout
from gateway.auth import bound_owner
from gateway.clusters import int_param
from gateway.deps import DEPS
from gateway.errors import ApiError, invalid
from gateway.jsonbody import read_json
from gateway.repo.proposals import list_proposals, recent_runs
from gateway.views import parse_id

STATUSES = ("open", "accepted", "dismissed", "stale", "all")
MAX_BODY = 4 * 1024


class ReclusterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str | None = Field(None, min_length=1, max_length=200)


def _unbound_admin(request: web.Request) -> None:
    if bound_owner(request) is not None:
        raise ApiError(403, "re-clustering proposals need an admin key not bound to an owner")


async def handle_proposals(request: web.Request) -> web.Response:
    _unbound_admin(request)
    status = request.query.get("status", "open")
    if status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}")
    model_id = request.query.get("model_id") or None
    limit = int_param(request, "limit", 50, 1, 200)
    offset = int_param(request, "offset", 0, 0, 1_000_000)
    pool = request.app[DEPS].pool
    # Runs first: a run read as done has its proposals committed (one transaction) before
    # the proposals are read, never after (the other order let a reader see a run done and
    # none of its proposals, seen in CI).
    runs = await recent_runs(pool, model_id, 5)
    found, total = await list_proposals(
        pool, None if status == "all" else status, model_id, limit, offset
    )
    return web.json_response(
        {"proposals": found, "total": total, "limit": limit, "offset": offset, "runs": runs}
    )


async def call_clusterer(request: web.Request, body: bytes) -> ClusterCommandReply:
    """Send an admin command to the clusterer; its reply, or the ApiError it amounts to."""
    try:
        raw = await request.app[DEPS].cluster_commands.call(body)
    except RpcTimeout:
        raise ApiError(
            504, "the clusterer did not answer in time; the command may still be carried out"
        ) from None
    reply = ClusterCommandReply.model_validate_json(raw)
    if reply.status >= 300:
        raise ApiError(reply.status, reply.error or "the command failed", reply.details)
    return reply


async def handle_accept(request: web.Request) -> web.Response:
    """POST .../proposals/{proposal_id}/accept: the clusterer carries it out."""
    return await _decide(request, "accept")


async def handle_dismiss(request: web.Request) -> web.Response:
    """POST .../proposals/{proposal_id}/dismiss: a later run does not propose it again."""
    return await _decide(request, "dismiss")


async def _decide(request: web.Request, decision: Literal["accept", "dismiss"]) -> web.Response:
    _unbound_admin(request)
    proposal_id = parse_id(request, "proposal_id", "proposal id")
    command = ProposalCommand(proposal_id=proposal_id, actor="admin", decision=decision)
    reply = await call_clusterer(request, command.model_dump_json().encode())
    result: dict[str, Any] = reply.cluster or {}
    return web.json_response(result)


async def handle_recluster(request: web.Request) -> web.Response:
    """POST /api/v1/clusters/recluster: run the re-clustering now (202; see the runs)."""
    _unbound_admin(request)
    raw = await read_json(request, MAX_BODY) if request.can_read_body else {}
    try:
        body = ReclusterBody.model_validate(raw)
    except ValidationError as error:
        raise invalid("re-clustering request", error) from None
    command = ReclusterCommand(actor="admin", model_id=body.model_id)
    reply = await call_clusterer(request, command.model_dump_json().encode())
    return web.json_response(reply.cluster or {}, status=202)
