"""The cluster's internal routes (admin token, left out of /openapi.json): a node's
status and digest, the snapshot a replica loads, and the reachability replicas report.
docs/cluster.md describes them."""

from __future__ import annotations

import orjson
import trio

from engine import errors
from gateway.auth import require_admin
from gateway.routes.context import Context, Route, principal
from gateway.web import Request, Response, json_response
from persistence.replication import SNAPSHOT_CONTENT_TYPE, digest, snapshot_bytes

POSITION_HEADER = "Chat-Engine-Position"
EPOCH_HEADER = "Chat-Engine-Epoch"
HISTORY_LIMIT_HEADER = "Chat-Engine-History-Limit"
MAX_REPORTED_USERS = 1_000_000


async def status(ctx: Context, req: Request) -> Response:
    require_admin(principal(ctx, req))
    engine = ctx.engine
    if not engine.started.is_set():
        raise errors.Unavailable("The engine is starting.")
    # read in one go, with no checkpoint: the digest is of the state at this position
    return json_response(
        {
            "role": ctx.node.role,
            "position": engine.applied_lsn,
            "epoch": engine.realtime.epoch,
            "digest": digest(engine.state, engine.realtime.histories),
        }
    )


async def snapshot(ctx: Context, req: Request) -> Response:
    require_admin(principal(ctx, req))
    engine = ctx.engine
    if not engine.started.is_set():
        raise errors.Unavailable("The engine is starting.")
    histories = engine.realtime.histories
    try:  # forked at one position: the child encodes, the server goes on
        lsn, data = await snapshot_bytes(lambda: engine.applied_lsn, engine.state, histories.export)
    except OSError as error:
        raise errors.Unavailable(f"The snapshot could not be made: {error}") from None
    return Response(
        data,
        200,
        SNAPSHOT_CONTENT_TYPE,
        [
            (POSITION_HEADER, str(lsn)),
            (EPOCH_HEADER, histories.epoch),
            (HISTORY_LIMIT_HEADER, str(histories.history_limit)),
        ],
    )


async def reachability(ctx: Context, req: Request) -> Response:
    require_admin(principal(ctx, req))
    try:
        body = orjson.loads(req.body)
    except orjson.JSONDecodeError:
        raise errors.InvalidJson("The body is not JSON.") from None
    users = body.get("users") if isinstance(body, dict) else None
    if (
        not isinstance(users, list)
        or len(users) > MAX_REPORTED_USERS
        or not all(isinstance(user, str) for user in users)
    ):
        raise errors.Invalid("Invalid body.", {"users": ["a list of user ids"]})
    ctx.engine.reachability.reported(users)
    await trio.lowlevel.checkpoint()
    return json_response({"users": len(users)})


ROUTES = [
    Route("GET", "/internal/v1/status", status),
    Route("GET", "/internal/v1/snapshot", snapshot),
    Route("POST", "/internal/v1/reachability", reachability),
]
