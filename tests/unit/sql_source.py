"""Reading SQL out of Python source with `ast`, for the lint-style tests of where SQL lives."""

from __future__ import annotations

import ast
import re

_STATEMENT = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b")
_SELECT_FROM = re.compile(r"\bSELECT\b.*\bFROM\b", re.S)


def looks_like_sql(text: str) -> bool:
    """True for text that reads as an SQL statement (keywords in capitals, as ours are)."""
    return bool(_STATEMENT.match(text) or _SELECT_FROM.search(text))


def literal_text(node: ast.AST) -> str | None:
    """The text of a string literal; an f-string read whole, its placeholders as `{}`."""
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}"
            for v in node.values
        )
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _docstring_ids(tree: ast.Module) -> set[int]:
    holders: list[ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef] = [tree]
    holders += [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    found: set[int] = set()
    for holder in holders:
        body = holder.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
    return found


def sql_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string literal in the source that looks like SQL.

    An f-string is read whole (its parts are not read again); docstrings are prose.
    """
    tree = ast.parse(source)
    skip = _docstring_ids(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
        text = literal_text(node)
        if text is not None and id(node) not in skip and looks_like_sql(text):
            found.append((getattr(node, "lineno", 0), text))
    return sorted(found)
