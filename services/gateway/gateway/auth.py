"""API keys: who may read, write or administer, and which owner's uploads a key may touch.

Keys come from `API_KEYS` (comma-separated `key:role[:owner]`, role `read`, `write` or
`admin`; each role includes the ones before it) and `ADMIN_API_KEY`. A key bound to an owner
sees, searches and writes only that owner's uploads; the owner of what it uploads comes from
the key. Keys are sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. With no key
configured the gateway is open — it says so at start and in /health.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import hdrs, web

from gateway.errors import ApiError
from gateway.names import OWNER

Role = Literal["read", "write", "admin"]
RANK: dict[str, int] = {"read": 1, "write": 2, "admin": 3}
MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key (by a digest prefix, never the key), its role and its owner."""

    key_id: str
    role: Role
    owner: str | None = None

    def may(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


OPEN = Principal("open", "admin", None)
PRINCIPAL = web.RequestKey("principal", Principal)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(entries: tuple[str, ...], admin_key: str | None) -> dict[str, Principal]:
    """Principals by key digest; ValueError naming the bad entry (never the key itself)."""
    keys: dict[str, Principal] = {}
    specs = [e.split(":") for e in entries] + ([[admin_key, "admin"]] if admin_key else [])
    for n, parts in enumerate(specs, start=1):
        if len(parts) not in (2, 3):
            raise ValueError(f"entry {n} is not key:role or key:role:owner")
        key, role = parts[0].strip(), parts[1].strip()
        owner = parts[2].strip() if len(parts) == 3 else None
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"entry {n}: a key needs at least {MIN_KEY_LENGTH} characters")
        if role not in RANK:
            raise ValueError(f"entry {n}: role must be read, write or admin")
        if owner is not None and not OWNER.match(owner):
            raise ValueError(f"entry {n}: invalid owner")
        digest = _digest(key)
        if digest in keys:
            raise ValueError(f"entry {n}: the same key twice")
        keys[digest] = Principal(digest[:12], role, owner)  # type: ignore[arg-type]
    return keys


class KeyRing:
    def __init__(self, keys: dict[str, Principal]) -> None:
        self._keys = keys

    @property
    def open(self) -> bool:
        return not self._keys

    def lookup(self, key: str) -> Principal | None:
        return self._keys.get(_digest(key))


KEYS = web.AppKey("keys", KeyRing)


def required_role(request: web.Request) -> Role | None:
    """The role a request needs; None for what is always open (probes, the API document)."""
    path = request.path
    if not path.startswith("/api/v1/") or path in ("/api/v1/openapi.json", "/api/v1/me"):
        return None
    if path.startswith("/api/v1/admin/"):
        return "admin"
    if path.startswith("/api/v1/clusters/") and request.method in ("PATCH", "POST"):
        return "admin"
    if path.startswith("/api/v1/clusters/proposals"):
        return "admin"
    if path.startswith("/api/v1/schemas/") and request.method == "POST":
        return "admin"
    if path == "/api/v1/ingest" and request.method == "POST":
        return "write"
    if request.method == hdrs.METH_DELETE:  # an owner-bound key deletes only its own uploads
        return "write"
    return "read"


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("X-API-Key") or None


@web.middleware
async def authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    role = required_role(request)
    if role is None or request.method == "OPTIONS":
        return await handler(request)
    ring = request.app[KEYS]
    if ring.open:
        request[PRINCIPAL] = OPEN
        return await handler(request)
    key = _presented_key(request)
    principal = ring.lookup(key) if key else None
    if principal is None:
        raise ApiError(
            401,
            "a valid API key is required" if key else "an API key is required",
            headers={"WWW-Authenticate": 'Bearer realm="mammothbox"'},
        )
    if not principal.may(role):
        raise ApiError(403, f"this key may {principal.role}; this needs {role}")
    request[PRINCIPAL] = principal
    return await handler(request)


def principal(request: web.Request) -> Principal:
    found: Principal = request.get(PRINCIPAL, OPEN)
    return found


def presented(request: web.Request) -> Principal | None:
    """On an open endpoint: who the caller's key is (OPEN when the gateway runs open, None
    without a valid key)."""
    ring = request.app[KEYS]
    if ring.open:
        return OPEN
    key = _presented_key(request)
    return ring.lookup(key) if key else None


def presents_admin_key(request: web.Request) -> bool:
    """Whether an open endpoint's caller presented a valid admin key (never so when open)."""
    found = presented(request)
    return found is not None and found is not OPEN and found.may("admin")


def bound_owner(request: web.Request) -> str | None:
    """The owner a key is bound to (its uploads are all it may touch); None for any."""
    return principal(request).owner


CORS_HEADERS = "Authorization, X-API-Key, Content-Type, Idempotency-Key, X-Request-ID"


def cors(origins: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Answer browsers from the allowed origins (CORS_ALLOW_ORIGINS), preflights included."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = bool(origin) and ("*" in origins or origin in origins)
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if preflight and allowed:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE"
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if allowed and origin:
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            response.headers["Access-Control-Expose-Headers"] = (
                "X-Request-ID, Location, Retry-After"
            )
            response.headers["Vary"] = "Origin"
        return response

    return middleware
