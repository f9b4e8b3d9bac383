"""The operator console and the visitor page: static files under ``/console/``.

The files are package data (``gateway/static/``), so a wheel carries them as the
editable install does; the JavaScript client, ``clients/js/chat-engine.js``, is in that
folder as a symbolic link to the one copy in the repository, which a wheel build copies
as a file. They are read once, at the first request, into a table by name: a request
can name only a file of that table (one path segment, no ``..``, no sub-folder), so
nothing else on the disk can be reached through these routes.

Caching: every file is sent with a strong ``ETag`` and ``Cache-Control: no-cache``. The
modules' URLs carry no version (there is no build step to add one), so a browser must
revalidate each of them, or a new page could run against an old module; the revalidation
of an unchanged file is a 304 with no body. The pages run only their own scripts and
styles and talk only to their own origin (the API and ``/ws``): the
``Content-Security-Policy`` allows nothing else.

These routes are outside the API: /openapi.json does not list them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import orjson

from engine import errors
from gateway.routes.context import Context, Route
from gateway.web import JSON, Request, Response

PACKAGE = "gateway"
FOLDER = "static"
PREFIX = "/console/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CACHE_CONTROL = "no-cache"
# 'self' covers the page's own WebSocket origin (ws: and wss:) in current browsers.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


_files: dict[str, StaticFile] | None = None


def load_files() -> dict[str, StaticFile]:
    """Every servable file of the folder, by name (read once)."""
    global _files
    if _files is None:
        found: dict[str, StaticFile] = {}
        for entry in resources.files(PACKAGE).joinpath(FOLDER).iterdir():
            name = entry.name
            content_type = CONTENT_TYPES.get(name[name.rfind(".") :] if "." in name else "")
            if content_type is None or name.startswith(".") or not entry.is_file():
                continue
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            found[name] = StaticFile(body, content_type, etag)
        _files = found
    return _files


def not_modified(req: Request, etag: str) -> bool:
    wanted = req.header(b"if-none-match")
    if wanted is None:
        return False
    tags = [tag.strip() for tag in wanted.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def serve_file(req: Request, name: str) -> Response:
    found = load_files().get(name)
    if found is None:
        raise errors.NotFound("No such file.")
    headers = [("ETag", found.etag), ("Cache-Control", CACHE_CONTROL), *SECURITY_HEADERS]
    if not_modified(req, found.etag):
        return Response(b"", 304, None, headers)
    return Response(found.body, 200, found.content_type, headers)


def redirect(location: str) -> Response:
    """A 302 with a JSON body naming the place, as every other answer of the server that
    has a body is JSON (a client that does not follow redirects still reads one)."""
    headers = [("Location", location), ("Cache-Control", CACHE_CONTROL)]
    return Response(orjson.dumps({"location": location}), 302, JSON, headers)


async def root(ctx: Context, req: Request) -> Response:
    return redirect(PREFIX)


async def console_bare(ctx: Context, req: Request) -> Response:
    return redirect(PREFIX)  # the pages' relative links need the trailing slash


async def console_index(ctx: Context, req: Request) -> Response:
    return serve_file(req, "index.html")


async def console_file(ctx: Context, req: Request, name: str) -> Response:
    return serve_file(req, name)


ROUTES = [
    Route("GET", "/", root),
    Route("GET", "/console", console_bare),
    Route("GET", PREFIX, console_index),
    Route("GET", PREFIX + "{name}", console_file),
]
