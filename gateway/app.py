"""The composition root of the edge: one ``Context``, every resource's routes bound to
it in one route table (and described in /openapi.json), the request hooks, the
``WebApp`` both HTTP servers call, its ASGI face, and the WebSocket gateway.

The routes themselves are in ``gateway.routes``, one module a resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from quart_trio import QuartTrio

from engine import errors
from engine.actors.supervisor import Engine
from engine.webhooks import Allow
from gateway.asgi import asgi_app
from gateway.cluster.node import ClusterNode
from gateway.cors import Cors
from gateway.forwarded import Forwarded
from gateway.metrics import Metrics
from gateway.openapi import OpenApi
from gateway.ratelimit import RateLimiter
from gateway.routes import (
    carts,
    chats,
    client,
    console,
    directory,
    internal,
    messages,
    ops,
    presences,
    report,
    tokens,
    webhooks,
)
from gateway.routes.context import WRITES, Context, Route, admit
from gateway.settings import (
    DEFAULT_RATE_LIMIT,
    DEFAULT_REGISTRATION_RATE_LIMIT,
    Network,
    RateLimit,
)
from gateway.web import Hook, Request, Response, Router, WebApp
from gateway.webhooks import Deliverer, DeliverySettings, WebhookCollector
from gateway.ws import WsGateway, WsSettings

MAX_WRITERS = 100_000  # write buckets kept at most (see gateway/ratelimit.py)

ROUTES: tuple[Route, ...] = (
    *ops.ROUTES,
    *directory.ROUTES,
    *tokens.ROUTES,
    *chats.ROUTES,
    *report.ROUTES,
    *presences.ROUTES,
    *carts.ROUTES,
    *messages.ROUTES,
    *client.ROUTES,
    *internal.ROUTES,
    *webhooks.ROUTES,
    *console.ROUTES,
)


@dataclass(slots=True)
class GatewaySettings:
    admin_token_hash: str
    public_url: str | None = None
    open_registration: bool = True
    # writes per user or visitor (None: not limited)
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT
    # open registration per client address (None: not limited); its own option, so
    # that turning the write limit off does not open registration to a flood
    registration_rate_limit: RateLimit | None = DEFAULT_REGISTRATION_RATE_LIMIT
    cors_origins: tuple[str, ...] = ()
    forwarded_allow_ips: tuple[Network, ...] = ()
    ws: WsSettings | None = None
    # every write's answer names the log position that carries it (a cluster's primary:
    # replicas wait for it before they answer)
    position_header: bool = False
    webhook_allow: Allow = Allow()  # no webhook target is allowed


@dataclass(slots=True)
class Gateway:
    web: WebApp  # called directly by the built-in HTTP/1.1 server
    asgi: QuartTrio  # the same pipeline as an ASGI app, for hypercorn
    ws: WsGateway
    webhooks: Deliverer  # run it once the engine has started


def create_app(
    engine: Engine, settings: GatewaySettings, node: ClusterNode | None = None
) -> Gateway:
    ws = WsGateway(engine, settings.admin_token_hash, settings.ws or WsSettings())
    node = node if node is not None else ClusterNode()
    limits = settings.rate_limit
    registration = settings.registration_rate_limit
    ctx = Context(
        engine=engine,
        state=engine.state,
        settings=settings,
        registrations=None
        if registration is None
        else RateLimiter(registration.rate, registration.burst, trio.current_time),
        writes=None
        if limits is None
        else RateLimiter(limits.rate, limits.burst, trio.current_time, MAX_WRITERS),
        metrics=Metrics(engine, ws),
        api=OpenApi(),
        node=node,
        webhooks=Deliverer(engine, DeliverySettings.from_environment(settings.webhook_allow)),
    )
    ctx.metrics.registry.register(node)
    web = WebApp(
        route_table(ctx),
        partial(admit, ctx),
        ctx.metrics.observe_request,
        hooks(settings, engine),
    )
    assert ctx.webhooks is not None
    ctx.metrics.registry.register(WebhookCollector(ctx.webhooks))
    return Gateway(web=web, asgi=asgi_app(web), ws=ws, webhooks=ctx.webhooks)


def route_table(ctx: Context) -> Router:
    """Every route, its handler bound to ``ctx``; the API's routes also go into the
    OpenAPI document, in the same order."""
    router = Router()
    for route in ROUTES:
        if ctx.node.forwards_writes and route.method in WRITES and route.path.startswith("/api/"):
            router.add(route.method, route.path, partial(forward, ctx))
        elif route.method in WRITES and route.path.startswith("/api/"):
            router.add(route.method, route.path, partial(unless_refused, ctx, route.handler))
        else:
            router.add(route.method, route.path, partial(route.handler, ctx))
        if route.summary is not None:
            ctx.api.add(route)
    return router


async def forward(ctx: Context, req: Request, **_: str) -> Response:
    """A replica's write: the primary's answer, once this node shows the write."""
    return await ctx.node.forward(req)


async def unless_refused(ctx: Context, handler: Any, req: Request, **params: str) -> Response:
    """A write, unless this node refuses writes now (a primary whose cluster lease
    another primary holds)."""
    refusal = ctx.node.write_refusal()
    if refusal is not None:
        raise errors.Unavailable(refusal)
    response: Response = await handler(ctx, req, **params)
    return response


class PositionHeader:
    """Every write's answer names the log position this node has applied once it is
    answered, which covers the write (``Chat-Engine-Position``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def enter(self, request: Request) -> Response | None:
        return None

    def leave(self, request: Request, response: Response) -> None:
        if request.method in WRITES:
            response.headers.append((internal.POSITION_HEADER, str(self._engine.applied_lsn)))
            response.headers.append((internal.EPOCH_HEADER, self._engine.realtime.epoch))


def hooks(settings: GatewaySettings, engine: Engine) -> list[Hook]:
    chain: list[Hook] = []
    if settings.position_header:
        chain.append(PositionHeader(engine))
    if settings.forwarded_allow_ips:  # first: CORS and the handlers see the rewrite
        chain.append(Forwarded(settings.forwarded_allow_ips))
    if settings.cors_origins:
        chain.append(Cors(settings.cors_origins))
    return chain
