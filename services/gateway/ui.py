"""The web UI at ``/``: the built assets shipped in the package (``ui/`` is their source, built with
Vite; no user needs Node.js), served without authentication — the page signs in through the API —
and under a strict Content-Security-Policy: no inline script, no eval, no framing, nothing but
this origin.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).parent / "ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# What every response carries (JSON too: a browser that renders one must not run or frame it).
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}


def is_ui(request: web.Request) -> bool:
    return (request.match_info.route.name or "").startswith("ui_")


async def index(request: web.Request) -> web.StreamResponse:
    page = UI_DIR / "index.html"
    if not page.is_file():
        return web.Response(status=404, text="the web UI is not built into this package (cd ui && npm run build)")
    return web.FileResponse(page, headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = UI_DIR / "assets" / name
    if not _ASSET.match(name) or not path.is_file():
        return web.Response(status=404, text="no such asset")
    content_type = _TYPES.get(path.suffix, "application/octet-stream")
    # Names do not change between builds: the browser asks again, and gets a 304 when unchanged.
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index, name="ui_index")
    app.router.add_get("/assets/{name}", asset, name="ui_asset")
