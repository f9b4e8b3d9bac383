"""Organizations, rooms and their shares, users, and an org's visitors (registration
and api_data)."""

from __future__ import annotations

from engine import errors, shapes, views
from engine.access import may_set_api_data, may_share_room
from engine.ids import is_visitor_id
from engine.state import PRINCIPAL_USER
from gateway import validation as v
from gateway.auth import org_user, require_admin, require_org, visible_room
from gateway.routes.context import Context, Route, page, principal, read_body
from gateway.web import Request, Response, json_response


async def create_org(ctx: Context, req: Request) -> Response:
    require_admin(principal(ctx, req))
    data = read_body(req, v.OrgCreate)
    org, token = await ctx.engine.directory.create_org(data.name)
    return json_response(views.org_view(org, token), 201)


async def list_orgs(ctx: Context, req: Request) -> Response:
    require_admin(principal(ctx, req))
    return page(ctx, req, ctx.state.all_orgs(), views.org_view)


async def get_org(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    return json_response(views.org_view(ctx.state.orgs[org_id]))


async def create_room(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    data = read_body(req, v.RoomCreate)
    room = await ctx.engine.directory.create_room(org_id, data.name, data.private_chats)
    return json_response(views.room_view(room), 201)


async def list_rooms(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    return page(ctx, req, ctx.state.rooms_of_org(org_id), views.room_view)


async def share_room(ctx: Context, req: Request, org_id: str, room_id: str) -> Response:
    state = ctx.state
    require_org(state, principal(ctx, req), org_id, users_too=False)
    room = visible_room(state, org_id, room_id)
    if not may_share_room(org_id, room):
        raise errors.Forbidden("Only the room's owner may share it.")
    data = read_body(req, v.ShareCreate)
    await ctx.engine.directory.share_room(room, data.organization_id)
    return json_response({"room_id": room.id, "organization_id": data.organization_id}, 201)


async def create_user(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    data = read_body(req, v.UserCreate)
    user, token = await ctx.engine.directory.create_user(
        org_id,
        first_name=data.first_name,
        last_name=data.last_name,
        alias=data.alias,
        room_ids=data.room_ids,
    )
    return json_response(views.user_view(user, token), 201)


async def list_users(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    return page(ctx, req, ctx.state.users_of_org(org_id), views.user_view)


async def get_user(ctx: Context, req: Request, org_id: str, user_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    return json_response(views.user_view(org_user(ctx.state, org_id, user_id)))


async def whoami(ctx: Context, req: Request) -> Response:
    caller = principal(ctx, req)
    user = ctx.state.users.get(caller.id) if caller.kind == PRINCIPAL_USER else None
    return json_response(views.me_view(caller.kind, caller.id, caller.org_id, user))


async def register_visitor(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    data = read_body(req, v.VisitorCreate)
    created, visitor, token = await ctx.engine.directory.register_visitor(org_id, data.id)
    return json_response({"id": visitor.id, "token": token}, 201 if created else 200)


async def put_api_data(ctx: Context, req: Request, org_id: str, visitor_id: str) -> Response:
    state = ctx.state
    require_org(state, principal(ctx, req), org_id)
    visitor = state.visitors.get(visitor_id) if is_visitor_id(visitor_id) else None
    if visitor is None or not may_set_api_data(org_id, visitor):
        raise errors.NotFound("Visitor not found.")
    items = v.parse_api_data(req.body, req.header(b"content-type"))
    await ctx.engine.directory.set_api_data(org_id, visitor, items)
    return json_response(visitor.api_data[org_id])


ORG = "/api/v5/orgs/{org_id}"
ROUTES = [
    Route(
        "POST",
        "/api/v5/orgs",
        create_org,
        "Create an organization (admin).",
        body=v.OrgCreate,
        status=201,
        response=shapes.ref("Org"),
    ),
    Route("GET", ORG, get_org, "Get an organization.", response=shapes.ref("Org")),
    Route(
        "POST",
        ORG + "/rooms",
        create_room,
        "Create a room.",
        body=v.RoomCreate,
        status=201,
        response=shapes.ref("Room"),
    ),
    Route(
        "GET",
        ORG + "/rooms",
        list_rooms,
        "List the org's own and shared rooms.",
        response=shapes.cursor_page("Room"),
    ),
    Route(
        "GET",
        "/api/v5/orgs",
        list_orgs,
        "List every organization, oldest first (admin).",
        response=shapes.cursor_page("Org"),
    ),
    Route(
        "GET",
        "/api/v5/me",
        whoami,
        "Who the token belongs to (any valid token).",
        response=shapes.ref("Me"),
    ),
    Route(
        "POST",
        ORG + "/rooms/{room_id}/shares",
        share_room,
        "Share a room with another org.",
        body=v.ShareCreate,
        status=201,
        response=shapes.ref("Share"),
    ),
    Route(
        "POST",
        ORG + "/users",
        create_user,
        "Create a user (operator).",
        body=v.UserCreate,
        status=201,
        response=shapes.ref("User"),
    ),
    Route(
        "GET",
        ORG + "/users",
        list_users,
        "List the org's users, oldest first (no tokens).",
        response=shapes.cursor_page("User"),
    ),
    Route("GET", ORG + "/users/{user_id}", get_user, "Get a user.", response=shapes.ref("User")),
    Route(
        "POST",
        ORG + "/visitors",
        register_visitor,
        "Register (or re-key) a visitor of the org.",
        body=v.VisitorCreate,
        status=201,
        also=(200,),
        response=shapes.ref("VisitorCredentials"),
    ),
    Route(
        "PUT",
        ORG + "/visitors/{visitor_id}/api_data",
        put_api_data,
        "Replace the visitor's api_data.",
        body=v.API_DATA_BODY,
        response=shapes.ref("ApiData"),
    ),
]
