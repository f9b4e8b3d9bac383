"""Integration behind an existing API: an org's signed-token (JWT) verification keys,
and rotating an org's or a user's token (docs/integration.md)."""

from __future__ import annotations

from engine import errors, shapes, views
from engine.state import PRINCIPAL_ORG, PRINCIPAL_USER
from engine.tokens import keys_problem
from gateway import validation as v
from gateway.auth import org_user, require_org, require_self
from gateway.jwtauth import keys_problems
from gateway.routes.context import Context, Route, principal
from gateway.web import Request, Response, json_response


async def put_jwt_keys(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    keys = v.parse_jwt_keys(req.body, req.header(b"content-type"))
    problem = keys_problem(keys)
    if problem is not None:
        raise errors.invalid_field(*problem)
    unusable = keys_problems(keys)
    if unusable:
        raise errors.Invalid("Invalid input.", unusable)
    stored = await ctx.engine.directory.set_jwt_keys(org_id, keys)
    return json_response([views.jwt_key_view(key) for key in stored])


async def get_jwt_keys(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    keys = ctx.state.jwt_keys.get(org_id, {}).values()
    return json_response([views.jwt_key_view(key) for key in keys])


async def rotate_org_token(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    token = await ctx.engine.directory.rotate_token(PRINCIPAL_ORG, org_id)
    return json_response(views.org_view(ctx.state.orgs[org_id], token))


async def rotate_user_token(ctx: Context, req: Request, org_id: str, user_id: str) -> Response:
    caller = principal(ctx, req)
    require_org(ctx.state, caller, org_id)
    user = org_user(ctx.state, org_id, user_id)
    require_self(caller, user.id)
    token = await ctx.engine.directory.rotate_token(PRINCIPAL_USER, user.id)
    return json_response(views.user_view(user, token))


ORG = "/api/v5/orgs/{org_id}"
ROUTES = [
    Route(
        "PUT",
        ORG + "/jwt_keys",
        put_jwt_keys,
        "Replace the org's signed-token (JWT) verification keys; HS256 secrets are never shown back.",
        body=v.JwtKeysPut,
        response=shapes.ref("JwtKeys"),
    ),
    Route(
        "GET",
        ORG + "/jwt_keys",
        get_jwt_keys,
        "The org's verification keys: kid, algorithm and public keys (no secrets).",
        response=shapes.ref("JwtKeys"),
    ),
    Route(
        "POST",
        ORG + "/token",
        rotate_org_token,
        "A new org token; the old one stops working at once.",
        response=shapes.ref("Org"),
    ),
    Route(
        "POST",
        ORG + "/users/{user_id}/token",
        rotate_user_token,
        "A new token for the user; the old one stops working at once.",
        response=shapes.ref("User"),
    ),
]
