"""Each worker's SQL lives in its repo module: no statement text anywhere else in the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.sql_source import looks_like_sql, sql_literals

SERVICES = Path(__file__).resolve().parents[2] / "services"

# The packages held to the rule (the gateway's owner-scoped statements are held to more by
# test_owner_scope_lint.py).
PACKAGES = ("gateway", "clusterer", "analyzer", "embedder")

# Statements known to sit outside repo while their module is being reworked, by exact text:
# only these are excused, so nothing new slips in beside them. Delete an entry once its file
# calls the repo function named here.
PENDING: dict[str, set[str]] = {}


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
