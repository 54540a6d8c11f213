"""Owner isolation has one home: the gateway's SQL sits in gateway/repo/, every statement that
reads an owner-scoped table for a request goes through OwnerScope, and no owner predicate is
written anywhere but gateway/repo/scope.py. Pure: the gateway's source is read with `ast`."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from tests.unit.sql_source import literal_text, looks_like_sql
from tests.unit.sql_source import sql_literals as source_sql

GATEWAY = Path(__file__).resolve().parents[2] / "services" / "gateway" / "gateway"

# Tables holding an owner's rows, or reached through them (content and clusters through
# uploads).
OWNER_SCOPED = (
    "uploads",
    "jobs",
    "dead_letters",
    "idempotency_keys",
    "content",
    "clusters",
    "json_collections",
    "json_documents",
)
_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+(" + "|".join(OWNER_SCOPED) + r")\b")
# `owner = $1`, `owner IN (...)`, `$2::text IS NULL OR ...owner`: a predicate on an owner.
_OWNER_PREDICATE = re.compile(r"owner\s*(=|<>|!=|\bIN\b)|IS NULL OR\b[^)]*owner", re.I)
_SCOPE_MODULE = "repo/scope.py"

# Repo functions that touch owner-scoped tables without a request's scope, and why.
UNSCOPED = {
    "repo/ingest.py:_ingest_statement": "writes the request's own rows; its owner is the key's",
    "repo/ingest.py:_claim_idempotency_key": "keyed by the API key's own idempotency scope",
    "repo/ingest.py:write_ingest_with_key": "stores the answer under the key it just claimed",
    "repo/schemas.py:documents": "rows of a collection its caller found under the scope",
    "repo/deletion.py:delete_where": "deletes what its callers selected under an OwnerScope",
    "repo/objects.py:_upload_stage": "a fragment joined to a scoped upload `u` by its caller",
    "repo/ops.py:oldest_unfinished": "a gauge over all content, never shown to a request",
    "repo/ops.py:waiting_dead_letters": "a gauge over all dead letters, never shown to a request",
    "repo/deadletters.py:_requeue_one": "acts on rows `requeue` selected under the scope",
    # Backup, restore and the store check: the operator's tools, over the whole deployment.
    "repo/backup.py:stored_keys": "a backup copies every owner's objects",
    "repo/backup.py:summary": "a backup's counts of every owner's rows",
    "repo/backup.py:unfinished_media": "a restore drives every owner's unfinished work again",
    "repo/backup.py:unplaced_documents": "a restore drives every owner's unfinished work again",
    "repo/backup.py:collections_deciding": "a restore drives every owner's unfinished work again",
    "repo/backup.py:request_every_folder_sync": "a restore syncs every owner's folders",
}


@dataclass(frozen=True)
class Literal:
    path: str  # relative to the gateway package
    line: int
    text: str


def sql_literals(root: Path) -> list[Literal]:
    """Every SQL-looking string literal under `root` (f-strings read whole; docstrings not)."""
    return [
        Literal(path.relative_to(root).as_posix(), line, text)
        for path in sorted(root.rglob("*.py"))
        for line, text in source_sql(path.read_text())
    ]


def _in_repo(path: str) -> bool:
    return path.startswith("repo/") or path == "repo.py"


def misplaced_owner_sql(root: Path) -> list[str]:
    """`path:line table` of each statement on an owner-scoped table outside the repo package."""
    return [
        f"{s.path}:{s.line} {table}"
        for s in sql_literals(root)
        if not _in_repo(s.path)
        for table in sorted(set(_TABLE.findall(s.text)))
    ]


def owner_predicates_outside_scope(root: Path) -> list[str]:
    """`path:line` of each owner predicate written anywhere but gateway/repo/scope.py."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative == _SCOPE_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = literal_text(node)
            if text is not None and _OWNER_PREDICATE.search(text) and _looks_sql(text):
                found.append(f"{relative}:{getattr(node, 'lineno', 0)}")
    return found


def _looks_sql(text: str) -> bool:
    return looks_like_sql(text) or bool(re.search(r"\$\d|\{\w*\}|::text", text))


def _uses_scope(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Takes an OwnerScope (or makes one) and hands it to a call or calls one of its methods."""
    names = {
        a.arg
        for a in [*function.args.args, *function.args.kwonlyargs]
        if a.annotation is not None and "OwnerScope" in ast.unparse(a.annotation)
    }
    made = any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "OwnerScope"
        for n in ast.walk(function)
    )
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            if node.func.value.id in names:
                return True
        passed = [*node.args, *(k.value for k in node.keywords)]
        if any(isinstance(a, ast.Name) and a.id in names for a in passed):
            return True
        if made and any(
            isinstance(a, ast.Call) and isinstance(a.func, ast.Name) and a.func.id == "OwnerScope"
            for a in passed
        ):
            return True
    return False


def unscoped_repo_reads(root: Path) -> list[str]:
    """`path:function` of each repo function whose SQL touches an owner-scoped table (itself, or
    through a module-level statement it names) without going through OwnerScope."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if not _in_repo(relative) or relative == _SCOPE_MODULE:
            continue
        tree = ast.parse(path.read_text())
        constants = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            and (text := literal_text(node.value))
            and _TABLE.search(text)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            touches = any(
                (text := literal_text(n)) is not None
                and _TABLE.search(text)
                and looks_like_sql(text)
                for n in ast.walk(function)
            ) or any(isinstance(n, ast.Name) and n.id in constants for n in ast.walk(function))
            key = f"{relative}:{function.name}"
            if touches and key not in UNSCOPED and not _uses_scope(function):
                found.append(key)
    return found


def test_gateway_sql_lives_in_its_repo_package_when_the_source_is_scanned() -> None:
    assert [f"{s.path}:{s.line}" for s in sql_literals(GATEWAY) if not _in_repo(s.path)] == []


def test_owner_scoped_tables_are_queried_in_the_repo_only_when_the_source_is_scanned() -> None:
    assert misplaced_owner_sql(GATEWAY) == []


def test_owner_predicates_are_written_by_the_scope_only_when_the_source_is_scanned() -> None:
    assert owner_predicates_outside_scope(GATEWAY) == []


def test_repo_reads_of_owner_scoped_tables_go_through_the_scope_when_scanned() -> None:
    assert unscoped_repo_reads(GATEWAY) == []
    # Every excuse still names a function that exists (and needs it).
    functions = {
        f"{p.relative_to(GATEWAY).as_posix()}:{n.name}"
        for p in GATEWAY.rglob("*.py")
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert set(UNSCOPED) <= functions


def test_lint_finds_an_owner_filter_pasted_into_a_view_when_one_is_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "views.py").write_text(
        'SQL = "SELECT * FROM uploads u WHERE ($1::text IS NULL OR u.owner = $1)"\n'
    )
    (tmp_path / "repo" / "objects.py").write_text(
        "async def peek(conn, upload_id):\n"
        '    return await conn.fetchrow("SELECT * FROM content WHERE id = $1", upload_id)\n'
    )
    assert misplaced_owner_sql(tmp_path) == ["views.py:1 uploads"]
    assert owner_predicates_outside_scope(tmp_path) == ["views.py:1"]
    assert unscoped_repo_reads(tmp_path) == ["repo/objects.py:peek"]
