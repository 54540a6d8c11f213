"""Pure pieces of the VLM's resilience: retry delays, backoff, the circuit breaker."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def server_retry_delay(details: Any, retry_after: str | None = None) -> float | None:
    """The delay a server asked for: google.rpc.RetryInfo's `retryDelay` ("1.5s") in an
    error body, or a Retry-After header in seconds; None when it asked for none."""
    error = details.get("error", details) if isinstance(details, dict) else None
    for item in (error or {}).get("details", []) if isinstance(error, dict) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            return None
    return None


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * 2**attempt)
    return (rng or random).uniform(0, ceiling)


@dataclass
class Breaker:
    """Opens after `failures` consecutive failures; lets one trial call through after `reset_s`.

    closed -> (failures in a row) -> open -> (reset_s passed) -> half-open: one call decides.
    """

    failures: int
    reset_s: float
    clock: Any = field(default=time.monotonic)
    _count: int = 0
    _opened_at: float | None = None
    _trial: bool = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at >= self.reset_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self._count = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> None:
        self._trial = False
        if self._opened_at is not None:
            self._opened_at = self.clock()  # the trial failed: open again
            return
        self._count += 1
        if self._count >= self.failures:
            self._opened_at = self.clock()
