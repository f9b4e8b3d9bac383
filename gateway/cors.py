"""CORS for the browser origins of ``--cors-origins``.

A visitor widget on a customer's site calls the visitor API from the customer's origin;
the browser lets its page read the answers only if the server says that origin may.
Tokens travel in the ``Authorization`` header, never in cookies, so no credentials mode
is needed and ``*`` is safe to offer as well.

For a listed origin: a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) is answered 204 with the allowed methods and headers
and a max age, before any other check (it asks nothing of the engine); every other answer
carries ``Access-Control-Allow-Origin`` and exposes ``Retry-After`` (a 429's). For any
other origin nothing is added, and a preflight gets the plain ``OPTIONS`` answer, which
the browser then refuses. ``Vary: Origin`` is on every answer when the answer depends on
the origin, so a shared cache keeps them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.web import ROUTE_METHODS, Request, Response

ALLOW_METHODS = ", ".join(("HEAD", *ROUTE_METHODS))
ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Retry-After"
MAX_AGE = "7200"  # seconds a browser may cache a preflight (Chromium caps it here)


class Cors:
    """A request hook (``gateway.web.WebApp``)."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origin for origin in origins if origin != "*")

    def allowed(self, request: Request) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for this request, or None."""
        origin = request.header(b"origin")
        if origin is None:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    def enter(self, request: Request) -> Response | None:
        if request.method != "OPTIONS" or request.header(b"access-control-request-method") is None:
            return None
        allow = self.allowed(request)
        if allow is None:
            return None
        return Response(
            b"",
            204,
            None,
            [
                ("Access-Control-Allow-Origin", allow),
                ("Access-Control-Allow-Methods", ALLOW_METHODS),
                ("Access-Control-Allow-Headers", ALLOW_HEADERS),
                ("Access-Control-Max-Age", MAX_AGE),
            ],
        )

    def leave(self, request: Request, response: Response) -> None:
        if not self.any:
            response.headers.append(("Vary", "Origin"))
        allow = self.allowed(request)
        if allow is None or response.status == 204 and request.method == "OPTIONS":
            return
        response.headers.append(("Access-Control-Allow-Origin", allow))
        response.headers.append(("Access-Control-Expose-Headers", EXPOSE_HEADERS))
