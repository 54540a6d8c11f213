"""Each worker's SQL lives in its repo module: no statement text anywhere else in the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"

# The packages held to the rule; the gateway can join once its own statements have moved.
PACKAGES = ("clusterer", "analyzer", "embedder")

# Statements known to sit outside repo while their module is being reworked, by exact text:
# only these are excused, so nothing new slips in beside them. Delete an entry once its file
# calls the repo function named here.
PENDING: dict[str, set[str]] = {}

_STATEMENT = re.compile(r"(SELECT|INSERT|UPDATE|DELETE|WITH)\b")


def looks_like_sql(text: str) -> bool:
    """True for text that reads as an SQL statement (keywords in capitals, as ours are)."""
    stripped = text.strip()
    return bool(_STATEMENT.match(stripped)) or ("SELECT" in stripped and " FROM " in stripped)


def _docstrings(tree: ast.Module) -> set[int]:
    owners = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    found: set[int] = set()
    for owner in owners:
        body = owner.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
    return found


def sql_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string literal in the source that looks like SQL.

    An f-string is read whole, its placeholders as `{}`; docstrings are prose, not statements.
    """
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values
            )
            skip.update(id(v) for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in skip:
                continue
            text = node.value
        else:
            continue
        if looks_like_sql(text):
            found.append((node.lineno, text))
    return sorted(found)


def _is_repo(relative: Path) -> bool:
    return relative.name == "repo.py" or "repo" in relative.parts[1:-1]


def sql_outside_repo(package: str) -> list[str]:
    """`path:line` of each SQL-looking literal in the package outside repo.py / repo/."""
    root = SERVICES / package / package
    misplaced = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent)
        if _is_repo(relative):
            continue
        excused = PENDING.get(relative.as_posix(), set())
        for line, text in sql_literals(path.read_text()):
            if text.strip() not in excused:
                misplaced.append(f"{relative.as_posix()}:{line}: {text.strip()[:60]!r}")
    return misplaced


@pytest.mark.parametrize("package", PACKAGES)
def test_sql_homes_only_repo_holds_statements_when_scanning_a_worker(package: str) -> None:
    assert (SERVICES / package / package).is_dir()
    assert sql_outside_repo(package) == []


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "  \n  UPDATE clusters SET name = $2 WHERE id = $1",
        "INSERT INTO t DEFAULT VALUES",
        "DELETE FROM t",
        "WITH m AS (SELECT 1) SELECT * FROM m",
        "count(*) AS n, SELECT x FROM y",
    ],
)
def test_sql_homes_flags_text_when_it_reads_as_a_statement(text: str) -> None:
    assert looks_like_sql(text)


@pytest.mark.parametrize(
    "text",
    ["Select a cluster", "Updated the folder", "taken FROM the pool", "WITHOUT a lock", ""],
)
def test_sql_homes_passes_text_when_it_is_prose(text: str) -> None:
    assert not looks_like_sql(text)


def test_sql_homes_finds_fstrings_and_skips_docstrings_when_parsing_source() -> None:
    source = (
        '"""SELECT nothing FROM a docstring."""\n'
        "def f(cols):\n"
        '    """UPDATE: prose."""\n'
        '    return f"SELECT {cols} FROM clusters WHERE id = $1"\n'
    )
    assert sql_literals(source) == [(4, "SELECT {} FROM clusters WHERE id = $1")]
