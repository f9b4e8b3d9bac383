"""Users present in a chat: the list, joining (exclusive or not) and leaving."""

from __future__ import annotations

from engine import shapes, views
from gateway import validation as v
from gateway.auth import named_user, org_user, require_org, require_self, visible_chat
from gateway.routes.context import Context, Route, page, principal, read_body
from gateway.web import Request, Response, json_response


async def list_presences(ctx: Context, req: Request, org_id: str, chat_id: str) -> Response:
    state = ctx.state
    require_org(state, principal(ctx, req), org_id)
    chat = visible_chat(state, org_id, chat_id)
    return page(
        ctx, req, state.presences_of_chat(chat), views.presence_renderer(chat.id, state.users)
    )


async def join(ctx: Context, req: Request, org_id: str, chat_id: str) -> Response:
    state = ctx.state
    caller = principal(ctx, req)
    require_org(state, caller, org_id)
    chat = visible_chat(state, org_id, chat_id)
    data = read_body(req, v.PresenceCreate)
    user = named_user(state, org_id, data.user_id, "user_id")
    require_self(caller, user.id, "user_id")
    outcome = await ctx.engine.chats.join(chat, user, exclusive=data.exclusive)
    return json_response(
        views.presence_view(outcome.presence, chat.id, user), 201 if outcome.created else 200
    )


async def leave(ctx: Context, req: Request, org_id: str, chat_id: str, user_id: str) -> Response:
    state = ctx.state
    caller = principal(ctx, req)
    require_org(state, caller, org_id)
    chat = visible_chat(state, org_id, chat_id)
    user = org_user(state, org_id, user_id)
    require_self(caller, user.id)
    await ctx.engine.chats.leave(chat, user.id)
    return Response(b"", 204, None)


PRESENCES = "/api/v5/orgs/{org_id}/chats/{chat_id}/presences"
ROUTES = [
    Route(
        "GET",
        PRESENCES,
        list_presences,
        "Users present in the chat, by join time.",
        response=shapes.cursor_page("Presence"),
    ),
    Route(
        "POST",
        PRESENCES,
        join,
        "Join a user to the chat.",
        body=v.PresenceCreate,
        status=201,
        also=(200,),
        response=shapes.ref("Presence"),
    ),
    Route(
        "DELETE",
        PRESENCES + "/{user_id}",
        leave,
        "Remove a user from the chat.",
        status=204,
    ),
]
