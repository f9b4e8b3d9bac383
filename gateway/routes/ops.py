"""Operations: liveness, readiness, Prometheus metrics and the OpenAPI document. These
routes are outside the API, so /openapi.json does not list them."""

from __future__ import annotations

from engine import errors
from gateway.metrics import CONTENT_TYPE
from gateway.routes.context import STARTING, Context, Route
from gateway.web import Request, Response, error_response, json_response


async def healthz(ctx: Context, req: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(ctx: Context, req: Request) -> Response:
    if not ctx.engine.started.is_set():
        return error_response(errors.Unavailable(STARTING))
    reason = ctx.node.not_ready()
    if reason is not None:
        return error_response(errors.Unavailable(reason))
    return json_response({"status": "ready"})


async def metrics(ctx: Context, req: Request) -> Response:
    return Response(ctx.metrics.render(), 200, CONTENT_TYPE)


async def openapi(ctx: Context, req: Request) -> Response:
    return json_response(ctx.api.document())


ROUTES = [
    Route("GET", "/healthz", healthz),
    Route("GET", "/readyz", readyz),
    Route("GET", "/metrics", metrics),
    Route("GET", "/openapi.json", openapi),
]
