"""The error an admin command answers with (commands.py, switching.py)."""

from __future__ import annotations

from typing import Any


class CommandError(Exception):
    """An HTTP-like status (404, 409, 400) with its error and details, as the reply says."""

    def __init__(self, status: int, error: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details
