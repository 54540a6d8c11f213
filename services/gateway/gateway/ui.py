"""The web UI: plain ES modules and CSS in gateway/ui/, served under `/` with no build step.

`/` is the page (asked again before each use: `no-cache`); its assets are named with a hash
of their content (`/ui/app.js?v=1a2b…`), so a browser keeps them for a year and a new release
is fetched at once. Every answer carries a content security policy that allows the gateway's
own scripts, styles and API and nothing else (no inline script, no other origin, no
framing). The UI speaks the public API only, with the key the user gives it once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aiohttp import web

from gateway.auth import KEYS, presented

UI_DIR = Path(__file__).parent / "ui"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:;"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    version: str


@cache
def assets() -> dict[str, Asset]:
    """Every file under ui/ by its path there, read once."""
    found = {}
    for path in sorted(UI_DIR.rglob("*")):
        if path.is_file() and path.suffix in _TYPES:
            body = path.read_bytes()
            kind = _TYPES[path.suffix]
            name = path.relative_to(UI_DIR).as_posix()
            found[name] = Asset(body, kind, hashlib.sha256(body).hexdigest()[:16])
    return found


@cache
def page() -> bytes:
    """index.html with each asset's URL carrying its version."""
    html = assets()["index.html"].body.decode()
    for name, asset in assets().items():
        html = html.replace(f'"/ui/{name}"', f'"/ui/{name}?v={asset.version}"')
    return html.encode()


async def handle_page(request: web.Request) -> web.Response:
    return web.Response(
        body=page(),
        content_type="text/html",
        charset="utf-8",
        headers={**_HEADERS, "Cache-Control": "no-cache"},
    )


async def handle_asset(request: web.Request) -> web.Response:
    asset = assets().get(request.match_info["name"])
    if asset is None or request.match_info["name"] == "index.html":
        raise web.HTTPNotFound(text="no such asset")
    current = request.query.get("v") == asset.version
    caching = "public, max-age=31536000, immutable" if current else "no-cache"
    return web.Response(
        body=asset.body,
        content_type=asset.content_type,
        charset="utf-8",
        headers={**_HEADERS, "Cache-Control": caching, "ETag": f'"{asset.version}"'},
    )


async def handle_me(request: web.Request) -> web.Response:
    """Who the caller's key is (role null: no valid key): what the UI shows and hides. Open,
    so that a page without a key learns it needs one without a failed request."""
    who = presented(request)
    return web.json_response(
        {
            "role": who.role if who else None,
            "owner": who.owner if who else None,
            "open": request.app[KEYS].open,
        }
    )
