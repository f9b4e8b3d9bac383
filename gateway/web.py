"""The request pipeline of the HTTP API: a request object, a route table, the answer.

Why not quart's: a profile of the storm bench (1,000 contended calls fired at once) put
a large share of a request's server CPU in quart (request and app contexts, werkzeug
routing and headers, a task group per request, its response object; the figures are in
docs/decisions.md). A call
here is a dict lookup per path segment, one handler call and one ``bytes`` answer. The
built-in HTTP/1.1 server (``gateway/http1.py``) calls ``WebApp.handle`` directly;
connections that hypercorn serves (HTTP/2, ``--http1-server hypercorn``) reach it
through quart-trio, which stays the ASGI layer (``gateway/asgi.py``: one catch-all
route). Both paths run the same code below, so they answer alike.

What it keeps from quart's behaviour: ``HEAD`` on every ``GET`` route (no body),
``OPTIONS`` answered 200 with ``Allow``, 405 with ``Allow``, the app's check (engine
readiness) before routing errors, and one JSON error body for every failure. The body
size limit is the transports' (both refuse a body over it before a handler could see
it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson

from engine import errors

log = logging.getLogger("chat_engine.http")

INTERNAL = "Internal error."
JSON = "application/json"
# The methods a route may take, and HEAD and OPTIONS, which the pipeline answers for
# any route; the ASGI layer forwards these, and the latency metric names no other.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ROUTE_METHODS = tuple(method for method in METHODS if method not in ("HEAD", "OPTIONS"))


class Request:
    """What a handler reads: method, decoded path, query, headers, the whole body."""

    __slots__ = (
        "method",
        "path",
        "query_string",
        "headers",
        "body",
        "scheme",
        "server",
        "client",
        "forwarded_host",
        "_args",
        "_pairs",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: bytes,
        headers: list[tuple[bytes, bytes]],  # names lower-cased
        body: bytes,
        *,
        scheme: str = "http",
        server: tuple[str, int] | None = None,
        client: tuple[str, int] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.scheme = scheme
        self.server = server
        self.client = client
        self.forwarded_host: str | None = None  # from a trusted proxy (gateway/forwarded.py)
        self._args: dict[str, str] | None = None
        self._pairs: list[tuple[str, str]] | None = None

    def header(self, name: bytes) -> str | None:
        """The first value of a header (``name`` lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    @property
    def arg_pairs(self) -> list[tuple[str, str]]:
        """Query parameters in order, repeated names included (``+`` is a space), as
        UTF-8 whether percent-encoded or sent raw; bytes that are not UTF-8 read as U+FFFD."""
        if self._pairs is None:
            self._pairs = parse_qsl(
                self.query_string.decode("utf-8", "replace"),
                keep_blank_values=True,
                errors="replace",
            )
        return self._pairs

    @property
    def args(self) -> dict[str, str]:
        """Query parameters, the first value of each name."""
        if self._args is None:
            args: dict[str, str] = {}
            for name, value in self.arg_pairs:
                args.setdefault(name, value)
            self._args = args
        return self._args

    @property
    def host(self) -> str:
        if self.forwarded_host is not None:
            return self.forwarded_host
        host = self.header(b"host")
        if host:
            return host
        if self.server is None:
            return "localhost"
        return f"{self.server[0]}:{self.server[1]}"

    @property
    def remote_addr(self) -> str | None:
        return self.client[0] if self.client else None


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        body: bytes = b"",
        status: int = 200,
        content_type: str | None = JSON,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers or []


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status)


def error_body(error: errors.EngineError) -> bytes:
    """The JSON body of every error answer, on every transport: ``{"code", "detail",
    "errors"?}``. The one place it is built, so that no path can write it differently
    (or write invalid JSON by pasting a detail into a template)."""
    return orjson.dumps(error.body())


def error_response(error: errors.EngineError) -> Response:
    response = Response(error_body(error), error.status)
    retry_after = getattr(error, "retry_after", None)  # a 429 says when to come back
    if retry_after is not None:
        response.headers.append(("Retry-After", str(retry_after)))
    return response


Handler = Callable[..., Awaitable[Response]]
Check = Callable[[Request], None]


class Hook(Protocol):
    """Policy around every request (CORS, forwarded headers): ``enter`` may rewrite the
    request or answer it at once; ``leave`` may add headers to any answer."""

    def enter(self, request: Request) -> Response | None: ...

    def leave(self, request: Request, response: Response) -> None: ...


class _Node:
    __slots__ = ("literals", "param", "param_node", "methods", "rule")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.param: str | None = None  # the name of the segment that matches anything
        self.param_node: _Node | None = None
        self.methods: dict[str, Handler] = {}
        self.rule = ""


class Router:
    """Path templates (``/orgs/{org_id}/rooms``): a literal segment wins over a
    parameter; a parameter matches one non-empty segment."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, method: str, template: str, handler: Handler) -> None:
        if method not in ROUTE_METHODS:
            raise ValueError(f"{method} {template}: a route takes {', '.join(ROUTE_METHODS)}")
        node = self._root
        # "/console/" ends in an empty segment, so it is a path of its own, apart from
        # "/console"
        for segment in template[1:].split("/") if template != "/" else []:
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                if node.param_node is None:
                    node.param, node.param_node = name, _Node()
                elif node.param != name:
                    raise ValueError(f"{template}: '{name}' where '{node.param}' was used")
                node = node.param_node
            else:
                node = node.literals.setdefault(segment, _Node())
        if method in node.methods:
            raise ValueError(f"{method} {template} is defined twice")
        node.methods[method] = handler
        node.rule = template

    def match(self, path: str) -> tuple[_Node, dict[str, str]] | None:
        if not path.startswith("/"):
            return None
        segments = path[1:].split("/") if path != "/" else []
        # The common case, without recursion: a literal segment if there is one, else
        # the parameter; a dead end falls back to the full search (with backtracking).
        node: _Node | None = self._root
        params: dict[str, str] = {}
        for segment in segments:
            assert node is not None
            literal = node.literals.get(segment)
            if literal is not None:
                node = literal
            elif node.param_node is not None and segment:
                params[node.param] = segment  # type: ignore[index]
                node = node.param_node
            else:
                node = None
                break
        if node is not None and node.methods:
            return node, params
        params = {}
        node = self._walk(self._root, segments, 0, params)
        return None if node is None else (node, params)

    def _walk(
        self, node: _Node, segments: list[str], index: int, params: dict[str, str]
    ) -> _Node | None:
        if index == len(segments):
            return node if node.methods else None
        segment = segments[index]
        literal = node.literals.get(segment)
        if literal is not None:
            found = self._walk(literal, segments, index + 1, params)
            if found is not None:
                return found
        if node.param_node is not None and segment:
            found = self._walk(node.param_node, segments, index + 1, params)
            if found is not None:
                params[node.param] = segment  # type: ignore[index]
                return found
        return None


def allowed(node: _Node) -> str:
    methods = set(node.methods) | {"OPTIONS"}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


class WebApp:
    """Routes a request, runs its handler, and turns every failure into the contract's
    JSON error; ``observe(method, rule, status, seconds)`` sees every answer."""

    def __init__(
        self,
        router: Router,
        check: Check,
        observe: Callable[[str, str, int, float], None],
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.router = router
        self.check = check
        self.observe = observe
        self.hooks = tuple(hooks)

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        rule = "unmatched"
        try:
            for hook in self.hooks:
                early = hook.enter(request)
                if early is not None:
                    for each in self.hooks:
                        each.leave(request, early)
                    seconds = time.perf_counter() - started
                    self.observe(request.method, rule, early.status, seconds)
                    return early
            self.check(request)
            found = self.router.match(request.path)
            if found is None:
                raise errors.NotFound("Not found.")
            node, params = found
            method = request.method
            handler = node.methods.get("GET" if method == "HEAD" else method)
            if handler is not None:
                rule = node.rule
                response = await handler(request, **params)
            elif method == "OPTIONS":
                response = Response(b"", 200, None, [("Allow", allowed(node))])
            else:
                response = error_response(
                    errors.MethodNotAllowed(f"{method} is not allowed on this path.")
                )
                response.headers.append(("Allow", allowed(node)))
        except errors.EngineError as error:
            response = error_response(error)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(errors.EngineError(INTERNAL))
        for hook in self.hooks:
            hook.leave(request, response)
        self.observe(request.method, rule, response.status, time.perf_counter() - started)
        return response
