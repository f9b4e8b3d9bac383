"""What every route reads: the ``Context`` (engine, settings, limiters, metrics, the
OpenAPI document), the ``Route`` row, and the request steps most handlers share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from engine import errors
from engine.actors.supervisor import Engine
from engine.reachability import counts_for_reachability
from engine.state import State, limited_per_token
from gateway import validation as v
from gateway.auth import Principal, authenticate
from gateway.cluster.node import ClusterNode
from gateway.metrics import Metrics
from gateway.openapi import OpenApi
from gateway.pagination import link_builder, paginate
from gateway.ratelimit import RateLimiter, Throttled
from gateway.web import Request, Response, json_response

if TYPE_CHECKING:  # gateway.app builds the context from them and imports the routes
    from gateway.app import GatewaySettings

M = TypeVar("M", bound=BaseModel)
STARTING = "The engine is starting."
WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))


@dataclass(slots=True)
class Context:
    engine: Engine
    state: State
    settings: GatewaySettings
    registrations: RateLimiter | None  # open registration, per client address
    writes: RateLimiter | None  # per user or visitor; None: writes are not limited
    metrics: Metrics
    api: OpenApi
    node: ClusterNode  # the node's place in a cluster (a plain one: no cluster)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[..., Awaitable[Response]]  # (Context, Request, **path parameters)
    summary: str | None = None  # None: an operations route, left out of /openapi.json
    # the request body: its validating model, or a JSON Schema (with a "title") for a body
    # a model does not read
    body: type[BaseModel] | dict[str, Any] | None = None
    status: int = 200
    # the answer's JSON Schema, from engine.shapes (ref, cursor_page, report_page); None:
    # no body (204). A cursor page gets the cursor and page_size parameters by itself.
    response: dict[str, Any] | None = None
    also: tuple[int, ...] = ()  # other success statuses answering the same shape
    query: tuple[dict[str, Any], ...] = ()  # OpenAPI query parameters ("in" is added)
    token: bool = True  # False: callable without a token


def admit(ctx: Context, req: Request) -> None:
    """The check before routing: readiness, then the write budget. It runs before any
    handler, so a refused write changes nothing."""
    # (bodies over v.MAX_BODY_BYTES never get here: both transports refuse them)
    if req.path.startswith("/api/") and not ctx.engine.started.is_set():
        raise errors.Unavailable(STARTING)
    if ctx.writes is not None and req.method in WRITES:
        charge_write(ctx, req, ctx.writes)


def charge_write(ctx: Context, req: Request, writes: RateLimiter) -> None:
    """Only a user's or a visitor's token is limited; without a valid token the handler
    answers 401."""
    try:
        caller = authenticate(
            ctx.state,
            req.header(b"authorization"),
            ctx.settings.admin_token_hash,
            now_ms=ctx.engine.now(),
        )
    except errors.NotAuthenticated:
        return
    if limited_per_token(caller.kind):
        wait = writes.acquire(caller.id)
        if wait > 0:
            raise Throttled("Too many writes; slow down.", wait)


def principal(ctx: Context, req: Request) -> Principal:
    caller = authenticate(
        ctx.state,
        req.header(b"authorization"),
        ctx.settings.admin_token_hash,
        now_ms=ctx.engine.now(),
    )
    if counts_for_reachability(caller.kind):
        ctx.engine.reachability.touch(caller.id)  # a request keeps its presences alive
    return caller


def read_body(req: Request, model: type[M]) -> M:
    return v.validate(model, v.parse_json_object(req.body, req.header(b"content-type")))


def base_url(ctx: Context, req: Request) -> str:
    if ctx.settings.public_url:
        return ctx.settings.public_url.rstrip("/")
    return f"{req.scheme}://{req.host}"


def page(ctx: Context, req: Request, view: Any, render: Callable[[Any], Any]) -> Response:
    """One page of a keyset-paginated collection, with its ``next`` / ``previous`` links."""
    args = req.args
    return json_response(
        paginate(
            view,
            path=req.path,
            cursor=args.get("cursor"),
            page_size=v.parse_page_size(args),
            url_for=link_builder(base_url(ctx, req), req.path, req.arg_pairs),
            render=render,
        )
    )
