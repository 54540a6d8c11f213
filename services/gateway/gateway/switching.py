"""The model switch as an admin sees it (common/model_switch.py has the states).

GET /api/v1/admin/model-switch: the active model, the latest switch and its progress.
POST /api/v1/admin/model-switch/{pause,resume}: the backfill stops or goes on (the embedder
looks at the state before each round). POST .../{flip,drop,cancel}: carried out by the
clusterer, which owns clusters and folders, in one transaction each.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common import model_switch
from common.cluster_commands import ModelSwitchCommand
from common.db import Conn
from gateway.auth import bound_owner
from gateway.deps import DEPS
from gateway.errors import ApiError
from gateway.proposals import call_clusterer

ACTIONS = ("pause", "resume", "flip", "drop", "cancel")


def _unbound_admin(request: web.Request) -> None:
    if bound_owner(request) is not None:
        raise ApiError(403, "a model switch needs an admin key not bound to an owner")


async def describe(conn: Conn) -> dict[str, Any]:
    """The active model, the latest switch (with its progress while it is live)."""
    active = await model_switch.active_model(conn)
    switch = await model_switch.latest_switch(conn)
    found: dict[str, Any] = {
        "active_model": active[0] if active else None,
        "switch": switch.as_json() if switch else None,
    }
    if switch is not None and switch.status in model_switch.LIVE:
        found["progress"] = await model_switch.progress(conn, switch)
    return found


async def handle_model_switch(request: web.Request) -> web.Response:
    _unbound_admin(request)
    return web.json_response(await describe(request.app[DEPS].pool))


async def handle_model_switch_action(request: web.Request) -> web.Response:
    _unbound_admin(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(404, f"no such action: the actions are {', '.join(ACTIONS)}")
    pool = request.app[DEPS].pool
    if action in ("pause", "resume"):
        try:
            async with pool.acquire() as conn:
                await model_switch.set_paused(conn, action == "pause", "admin")
        except model_switch.SwitchConflict as error:
            raise ApiError(409, str(error)) from None
    else:
        command = ModelSwitchCommand(switch=action, actor="admin")
        await call_clusterer(request, command.model_dump_json().encode())
    return web.json_response(await describe(pool))
