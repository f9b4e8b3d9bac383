"""The cluster's internal routes (admin token, left out of /openapi.json): a node's
status and digest, the snapshot a replica loads, and the reachability replicas report.
docs/cluster.md describes them."""

from __future__ import annotations

import trio

from engine import errors
from gateway.auth import require_admin
from gateway.routes.context import Context, Route, principal
from gateway.validation import parse_json_object
from gateway.web import Request, Response, json_response
from persistence.replication import SNAPSHOT_CONTENT_TYPE, digest, snapshot_bytes

POSITION_HEADER = "Chat-Engine-Position"
EPOCH_HEADER = "Chat-Engine-Epoch"
HISTORY_LIMIT_HEADER = "Chat-Engine-History-Limit"
MAX_REPORTED_USERS = 2_000  # per body: replicas send 1,000 at a time
MAX_USER_ID_LENGTH = 64


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


def _ages(users: object) -> dict[str, float] | None:
    """``{user id: seconds since seen}`` (or a list of ids, seen now); None: invalid."""
    if isinstance(users, list):
        users = dict.fromkeys(users, 0.0) if all(isinstance(u, str) for u in users) else None
    if not isinstance(users, dict) or len(users) > MAX_REPORTED_USERS:
        return None
    ages: dict[str, float] = {}
    for user_id, age in users.items():
        if isinstance(age, bool) or not isinstance(age, int | float) or not age >= 0:
            return None
        ages[user_id] = float(min(age, 1e9))
    return ages


async def reachability(ctx: Context, req: Request) -> Response:
    require_admin(principal(ctx, req))
    if ctx.node.role == "replica":  # only the primary expires presences
        raise errors.Forbidden("Reachability reports go to the primary.")
    body = parse_json_object(req.body, req.header(b"content-type"))
    ages = _ages(body.get("users"))
    if ages is None:
        raise errors.Invalid(
            "Invalid body.", {"users": ["an object of user ids and seconds since seen"]}
        )
    users = ctx.engine.state.users  # unknown ids (and over-long ones) are ignored
    known = {
        user_id: age
        for user_id, age in ages.items()
        if len(user_id) <= MAX_USER_ID_LENGTH and user_id in users
    }
    ctx.engine.reachability.reported(known)
    await trio.lowlevel.checkpoint()
    # the replicas report every fifth of the smaller of theirs and this timeout
    timeout = ctx.engine.config.presence_timeout
    return json_response({"users": len(known), "presence_timeout": timeout})


ROUTES = [
    Route("GET", "/internal/v1/status", status),
    Route("GET", "/internal/v1/snapshot", snapshot),
    Route("POST", "/internal/v1/reachability", reachability),
]
