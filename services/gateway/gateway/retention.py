"""Retention: uploads older than their policy allows are deleted, as an admin's delete would.

The policy (RETENTION_DAYS and RETENTION_RULES: gateway/retention_policy.py) is applied by a
job in every gateway (RETENTION_INTERVAL_SECONDS; one at a time across gateways, the others
skip their turn). In RETENTION_MODE=dry-run, the default, the job only counts what is due
(`retention_due_uploads`, and a log line); an admin looks at `GET /api/v1/admin/retention`
(the listing), then sets RETENTION_MODE=delete or asks once: `POST /api/v1/admin/retention/run`
or `python -m gateway.retention --apply`. Both take an instant (`as_of`, default now): the
listing at an instant is exactly what a run at that instant deletes. What goes is counted in
`uploads_deleted_total{reason="retention"}` and audited per upload; its content follows once
no upload refers to it (gateway/deletion.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog
import uvloop
from aiohttp import web
from prometheus_client import Gauge
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from common.db import open_pool
from common.log import configure_logging
from common.settings import load_settings
from gateway.clusters import int_param
from gateway.deletion import UPLOADS_DELETED, actor_of
from gateway.deps import DEPS
from gateway.errors import ApiError, invalid
from gateway.jsonbody import read_json
from gateway.repo.deletion import Deleted
from gateway.repo.objects import take_singleton_lock
from gateway.repo.retention import Due, count_due, delete_due_batch, list_due
from gateway.repo.scope import OwnerScope
from gateway.retention_policy import RetentionPolicy
from gateway.settings import GatewaySettings
from gateway.views import scope

log = structlog.get_logger(__name__)

DUE = Gauge("retention_due_uploads", "Uploads the retention policy has made due, at the last run.")
LAST_RUN = Gauge(
    "retention_last_run_timestamp_seconds", "When the retention job last finished a run."
)
_LOCK = "mammothbox.retention"
EVERYONE = OwnerScope(None)
_MAX_BODY = 4096
# Instants before this are surely a mistake (and keep the date arithmetic in range).
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


class RunRequest(BaseModel):
    """POST /api/v1/admin/retention/run: delete what is due at `as_of` (default now)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    as_of: AwareDatetime | None = None


@dataclass(frozen=True)
class Run:
    """One run: what was due at `as_of`, and what was deleted (nothing in a dry run)."""

    as_of: datetime
    due: Due
    deleted: Deleted


class Retention:
    """Applies one policy to one deployment's uploads."""

    def __init__(self, pool: asyncpg.Pool, policy: RetentionPolicy) -> None:
        self.pool = pool
        self.policy = policy

    async def run(
        self,
        *,
        apply: bool,
        as_of: datetime | None = None,
        scope: OwnerScope = EVERYONE,
        actor: str = "retention",
        wait: bool = True,
    ) -> Run | None:
        """Count what is due at `as_of` (default now) and, with `apply`, delete it, in
        batches of one transaction each; None when another process is running and `wait` is
        false. A run cut off half-way is finished by the next (what is gone stays gone)."""
        started = time.monotonic()
        instant = as_of or datetime.now(UTC)
        deleted = Deleted()
        async with self.pool.acquire() as guard, guard.transaction():
            if not await take_singleton_lock(guard, _LOCK, wait):
                log.info("retention run skipped: another process is running it")
                return None
            async with self.pool.acquire() as conn:
                due = await count_due(conn, self.policy, instant, scope)
                after = None
                while apply:
                    batch = await delete_due_batch(conn, self.policy, instant, scope, actor, after)
                    if not batch.upload_ids:  # the walk is past the last upload due
                        break
                    deleted.add(batch)
                    UPLOADS_DELETED.labels("retention").inc(len(batch.upload_ids))
                    after = max(batch.upload_ids)
        log.info(
            "retention applied" if apply else "retention dry run",
            as_of=instant.isoformat(),
            due=due.total,
            by_rule=due.by_rule,
            deleted_uploads=len(deleted.upload_ids),
            deleted_jobs=len(deleted.job_ids),
            seconds=round(time.monotonic() - started, 3),
        )
        return Run(instant, due, deleted)

    async def every(self, interval: float, apply: bool, wake: Callable[[], None]) -> None:
        """Run every `interval` seconds, the first time one interval after start; `wake` is
        called after each run that deleted something (the relay publishes its events)."""
        while True:
            await asyncio.sleep(interval)
            try:
                run = await self.run(apply=apply, wait=False)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("retention run failed", error=str(error))
                continue
            except Exception:  # a bug must not end the runs for good, silently
                log.exception("retention run failed")
                continue
            if run is None:
                continue
            DUE.set(0 if apply else run.due.total)
            LAST_RUN.set(time.time())
            if run.deleted.upload_ids:
                wake()


def _as_of(raw: str | None, *, future: bool) -> datetime | None:
    if raw is None:
        return None
    try:
        instant = datetime.fromisoformat(raw)
    except ValueError:
        example = "2026-01-31T00:00:00Z"
        raise ApiError(400, f"as_of must be an ISO 8601 instant, e.g. {example}") from None
    return _checked(instant, future=future)


def _checked(instant: datetime, *, future: bool) -> datetime:
    if instant.tzinfo is None:
        raise ApiError(400, "as_of must have a time zone (Z or +hh:mm)")
    if instant < _EARLIEST:
        raise ApiError(400, "as_of must be after 1970")
    if not future and instant > datetime.now(UTC):
        raise ApiError(400, "as_of may not be in the future for a run (a listing may look ahead)")
    return instant


def _retention(request: web.Request) -> Retention:
    deps = request.app[DEPS]
    return Retention(deps.pool, deps.settings.retention_policy)


async def handle_retention(request: web.Request) -> web.Response:
    """The dry run: what is due at `as_of`, counted by rule, and one page of it."""
    deps = request.app[DEPS]
    retention = _retention(request)
    as_of = _as_of(request.query.get("as_of"), future=True) or datetime.now(UTC)
    limit = int_param(request, "limit", 100, 1, 1000)
    after: uuid.UUID | None = None
    if "after" in request.query:
        try:
            after = uuid.UUID(request.query["after"])
        except ValueError:
            raise ApiError(400, "after must be an upload id (a UUID)") from None
    async with deps.pool.acquire() as conn:
        due = await count_due(conn, retention.policy, as_of, scope(request))
        uploads = await list_due(
            conn, retention.policy, as_of, scope(request), after=after, limit=limit
        )
    return web.json_response(
        {
            "as_of": as_of.isoformat(),
            "mode": deps.settings.retention_mode,
            "policy": retention.policy.as_json(),
            "due": due.total,
            "by_rule": due.by_rule,
            "uploads": uploads,
            "next": uploads[-1]["system_id"] if len(uploads) == limit else None,
        }
    )


async def handle_retention_run(request: web.Request) -> web.Response:
    """Delete what is due at `as_of` (default now), whatever RETENTION_MODE says."""
    deps = request.app[DEPS]
    body: object = {}
    if request.can_read_body:
        body = await read_json(request, _MAX_BODY)
    try:
        ask = RunRequest.model_validate({} if body is None else body)
    except ValidationError as error:
        raise invalid("retention run", error) from None
    as_of = None if ask.as_of is None else _checked(ask.as_of, future=False)
    run = await _retention(request).run(
        apply=True, as_of=as_of, scope=scope(request), actor=actor_of(request)
    )
    assert run is not None  # waited for its turn
    deps.wake_relay()
    return web.json_response(
        {
            "as_of": run.as_of.isoformat(),
            "due": run.due.total,
            "by_rule": run.due.by_rule,
            "deleted_uploads": len(run.deleted.upload_ids),
            "deleted_jobs": len(run.deleted.job_ids),
        }
    )


async def _once(settings: GatewaySettings, apply: bool, as_of: datetime | None) -> Run:
    async with open_pool(settings, min_size=1, max_size=2) as pool:
        run = await Retention(pool, settings.retention_policy).run(apply=apply, as_of=as_of)
        assert run is not None
        if not apply:
            async with pool.acquire() as conn:
                after = None
                while page := await list_due(
                    conn,
                    settings.retention_policy,
                    run.as_of,
                    EVERYONE,
                    after=after,
                    limit=1000,
                ):
                    for u in page:
                        print(
                            "\t".join(
                                str(u[k])
                                for k in (
                                    "system_id",
                                    "owner",
                                    "kind",
                                    "collection",
                                    "created_at",
                                    "rule",
                                )
                            )
                        )
                    after = uuid.UUID(page[-1]["system_id"])
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.retention",
        description="List the uploads the retention policy (RETENTION_DAYS, RETENTION_RULES)"
        " has made due, one per line (id, owner, kind, collection, uploaded, rule); with"
        " --apply, delete them.",
    )
    parser.add_argument("--apply", action="store_true", help="delete what is due")
    parser.add_argument(
        "--as-of", metavar="INSTANT", help="ISO 8601 instant with a time zone (default: now)"
    )
    args = parser.parse_args(argv)
    settings = load_settings(GatewaySettings)
    configure_logging(settings, "retention", sys.stderr)
    try:
        as_of = _as_of(args.as_of, future=not args.apply)
    except ApiError as error:
        parser.error(str(error.error))
    uvloop.install()
    run = asyncio.run(_once(settings, args.apply, as_of))
    verb = "deleted" if args.apply else "due (dry run; --apply deletes them)"
    print(
        f"{len(run.deleted.upload_ids) if args.apply else run.due.total} uploads {verb}"
        f" as of {run.as_of.isoformat()}: {run.due.by_rule}"
    )


if __name__ == "__main__":
    main()
