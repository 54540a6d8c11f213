"""What a health status means to a load balancer or a checker: one mapping for every service.

healthy 200; degraded 429 (up and serving, but refusing or delaying some work: a broker
outage, a destination refusing events, backpressure) — Consul's convention for a warning,
and a code a load balancer can tell from both 200 and 503; unhealthy 503 (cannot serve).
"""

from __future__ import annotations

from typing import Literal

Status = Literal["healthy", "degraded", "unhealthy"]

STATUS_CODE: dict[Status, int] = {"healthy": 200, "degraded": 429, "unhealthy": 503}
