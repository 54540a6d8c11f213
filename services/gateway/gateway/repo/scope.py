"""Owner isolation, written once: a statement builder and the one owner scope.

A key bound to an owner sees only that owner's uploads, and what is reached through them:
their jobs, content, clusters and dead letters. Every statement that reads an owner-scoped
table for a request is built with a `Statement` (which numbers its own placeholders) and takes
its owner predicate from an `OwnerScope`; `OwnerScope.owns` is the only place in the gateway
that writes `owner = $n` (tests/unit/test_owner_scope_lint.py fails on any other).

We chose this helper over PostgreSQL row-level security: RLS is only real when the gateway's
reads run as a role that is neither superuser nor BYPASSRLS, with the owner set per
transaction by `set_config(..., true)` and a second role for the group-commit writes and the
workers (which work across owners). That is a deployment change of its own; the helper gives
the same guarantee for the statements the gateway runs, and the lint test keeps it so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Statement:
    """Arguments of a statement being built: `param` adds one and names its placeholder."""

    args: list[Any] = field(default_factory=list)

    def param(self, value: Any, cast: str | None = None) -> str:
        """The placeholder (`$3`, or `$3::uuid[]` with a cast) of a new argument."""
        self.args.append(value)
        return f"${len(self.args)}" + (f"::{cast}" if cast else "")


@dataclass(frozen=True)
class OwnerScope:
    """What a request may see: one owner's rows, or everyone's (owner None: an unbound key)."""

    owner: str | None

    @property
    def bound(self) -> bool:
        """Whether the scope is one owner's."""
        return self.owner is not None

    def owns(self, q: Statement, column: str) -> str:
        """The predicate that `column` (an owner column) is the scope's owner; TRUE if unbound."""
        if self.owner is None:
            return "TRUE"
        return f"{column} = {q.param(self.owner)}"

    def holds_content(self, q: Statement, content: str) -> str:
        """The owner has an upload of the content `content` (an SQL expression)."""
        if self.owner is None:
            return "TRUE"
        return (
            "EXISTS (SELECT 1 FROM uploads su"
            f" WHERE su.content_id = {content} AND {self.owns(q, 'su.owner')})"
        )

    def holds_cluster(self, q: Statement, cluster: str) -> str:
        """The owner has an upload in the cluster `cluster` (an SQL expression)."""
        if self.owner is None:
            return "TRUE"
        return (
            "EXISTS (SELECT 1 FROM content sc JOIN uploads su ON su.content_id = sc.id"
            f" WHERE sc.cluster_id = {cluster} AND {self.owns(q, 'su.owner')})"
        )

    def holds_job(self, q: Statement, job: str) -> str:
        """The job `job` (an SQL expression) is the owner's."""
        if self.owner is None:
            return "TRUE"
        return f"{job} IN (SELECT sj.id FROM jobs sj WHERE {self.owns(q, 'sj.owner')})"
