"""``GET /``: a small page to try the server in a browser (static HTML, CSS and JS
shipped in the package under ``static/``; no build step, no asset from elsewhere).

The page talks to the API only (``/v1/tasks``, ``/v1/status``, the predict route) and
puts every string the API returns into the page as text, never as HTML. Its Content
Security Policy allows nothing but this server's own files, so no inline script and no
other origin runs in it even if a string slipped through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

# what the page is made of: URL path → (file under static/, media type); nothing else is served
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
    "/static/icon.svg": ("icon.svg", "image/svg+xml"),
}
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


def add_page_routes(app: FastAPI) -> None:
    """The page's files, read from the package once, each at its fixed path."""
    static = files("e2vpt.serving") / "static"
    for path, (name, media_type) in PAGE_FILES.items():
        route = _file_route((static / name).read_bytes(), media_type)
        app.add_api_route(path, route, methods=["GET"], include_in_schema=False)


def _file_route(body: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def route() -> Response:  # no parameters: a request chooses nothing here
        return Response(body, media_type=media_type, headers=PAGE_HEADERS)

    return route
