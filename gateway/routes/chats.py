"""Chats seen by the org: a room's open chats, a user's chats, creating (or resuming) a
chat, one chat in rich form, ending it or setting its privacy, its tags and its
participations."""

from __future__ import annotations

from engine import errors, shapes, views
from engine.access import visitor_usable_in_room
from engine.ids import is_visitor_id
from gateway import validation as v
from gateway.auth import named_user, org_user, require_org, require_self, visible_chat, visible_room
from gateway.routes.context import Context, Route, page, principal, read_body
from gateway.web import Request, Response, json_response


async def room_chats(ctx: Context, req: Request, org_id: str, room_id: str) -> Response:
    state = ctx.state
    require_org(state, principal(ctx, req), org_id)
    room = visible_room(state, org_id, room_id)
    waiting = v.optional_bool(req.args, "is_waiting_response")
    return page(ctx, req, state.open_chats_of_room(room.id, waiting), views.chat_collection_view)


async def user_chats(ctx: Context, req: Request, org_id: str, user_id: str) -> Response:
    state = ctx.state
    caller = principal(ctx, req)
    require_org(state, caller, org_id)
    user = org_user(state, org_id, user_id)
    require_self(caller, user.id)
    return page(ctx, req, state.chats_of_user(user.id), views.chat_collection_view)


async def current_chats(ctx: Context, req: Request, org_id: str, user_id: str) -> Response:
    state = ctx.state
    caller = principal(ctx, req)
    require_org(state, caller, org_id)
    user = org_user(state, org_id, user_id)
    require_self(caller, user.id)
    return page(ctx, req, state.current_chats_of_user(user.id), views.chat_collection_view)


async def create_chat(
    ctx: Context, req: Request, org_id: str, room_id: str, visitor_id: str
) -> Response:
    state = ctx.state
    caller = principal(ctx, req)
    require_org(state, caller, org_id)
    room = visible_room(state, org_id, room_id)
    visitor = state.visitors.get(visitor_id) if is_visitor_id(visitor_id) else None
    if visitor is None or not visitor_usable_in_room(visitor, org_id, room):
        raise errors.NotFound("Visitor not found.")
    data = read_body(req, v.ChatCreate)
    resume_id = req.args.get("auto_resume", data.auto_resume)
    resume_user = None
    if resume_id is not None:
        resume_user = named_user(state, org_id, resume_id, "auto_resume")
        require_self(caller, resume_user.id, "auto_resume")
    created, chat = await ctx.engine.directory.create_chat(room, visitor, auto_resume=resume_user)
    return json_response(views.chat_collection_view(chat), 201 if created else 200)


async def add_tag(ctx: Context, req: Request, org_id: str, chat_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    chat = visible_chat(ctx.state, org_id, chat_id)
    data = read_body(req, v.TagCreate)
    await ctx.engine.chats.tag(chat, data.name, add=True)
    return json_response({"name": data.name}, 201)


async def remove_tag(ctx: Context, req: Request, org_id: str, chat_id: str, name: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    chat = visible_chat(ctx.state, org_id, chat_id)
    await ctx.engine.chats.tag(chat, name, add=False)
    return Response(b"", 204, None)


async def get_chat(ctx: Context, req: Request, org_id: str, chat_id: str) -> Response:
    state = ctx.state
    require_org(state, principal(ctx, req), org_id)
    chat = visible_chat(state, org_id, chat_id)
    return json_response(views.chat_rich_view_of(chat, state.users, state.visitors))


async def update_chat(ctx: Context, req: Request, org_id: str, chat_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    chat = visible_chat(ctx.state, org_id, chat_id)
    data = read_body(req, v.ChatUpdate)
    await ctx.engine.chats.update(chat, is_ended=data.is_ended, is_private=data.is_private)
    return await get_chat(ctx, req, org_id, chat_id)


async def participations(
    ctx: Context, req: Request, org_id: str, user_id: str, chat_id: str
) -> Response:
    state = ctx.state
    require_org(state, principal(ctx, req), org_id)
    org_user(state, org_id, user_id)
    chat = visible_chat(state, org_id, chat_id)
    return page(ctx, req, state.participations_of_chat(chat), views.participation_view)


ORG = "/api/v5/orgs/{org_id}"
CHAT = ORG + "/chats/{chat_id}"
ROUTES = [
    Route(
        "GET",
        ORG + "/rooms/{room_id}/chats",
        room_chats,
        "The room's open chats, oldest first.",
        query=v.WAITING_QUERY,
        response=shapes.cursor_page("ChatCollection"),
    ),
    Route(
        "GET",
        ORG + "/users/{user_id}/chats",
        user_chats,
        "Chats the user participates or was present in.",
        response=shapes.cursor_page("ChatCollection"),
    ),
    Route(
        "GET",
        ORG + "/users/{user_id}/current_chats",
        current_chats,
        "Chats the user is present in, by join time.",
        response=shapes.cursor_page("ChatCollection"),
    ),
    Route(
        "POST",
        ORG + "/rooms/{room_id}/visitors/{visitor_id}/chats",
        create_chat,
        "Create a chat, or resume one with auto_resume.",
        body=v.ChatCreate,
        status=201,
        also=(200,),
        query=v.AUTO_RESUME_QUERY,
        response=shapes.ref("ChatCollection"),
    ),
    Route(
        "POST",
        CHAT + "/tags",
        add_tag,
        "Tag a chat (idempotent).",
        body=v.TagCreate,
        status=201,
        response=shapes.ref("Tag"),
    ),
    Route(
        "DELETE",
        CHAT + "/tags/{name}",
        remove_tag,
        "Remove a tag (idempotent).",
        status=204,
    ),
    Route("GET", CHAT, get_chat, "A chat in rich form.", response=shapes.ref("ChatRich")),
    Route(
        "PATCH",
        CHAT,
        update_chat,
        "End a chat and/or set is_private.",
        body=v.ChatUpdate,
        response=shapes.ref("ChatRich"),
    ),
    Route(
        "GET",
        ORG + "/users/{user_id}/chats/{chat_id}/participations",
        participations,
        "The chat's participations.",
        response=shapes.cursor_page("Participation"),
    ),
]
