"""The visitor (client) API: open registration, and a visitor's own chats, their
presences, participations and messages, in the visitor's view (no operator-only
fields)."""

from __future__ import annotations

from functools import partial

from engine import errors, shapes, views
from engine.access import visitor_may_use_room
from engine.model import SENDER_VISITOR
from gateway import validation as v
from gateway.auth import own_chat, require_visitor
from gateway.ratelimit import Throttled, address_key
from gateway.routes.context import Context, Route, page, principal, read_body
from gateway.web import Request, Response, json_response


async def open_registration(ctx: Context, req: Request) -> Response:
    if not ctx.settings.open_registration:
        raise errors.Forbidden("Open visitor registration is turned off.")
    if ctx.registrations is not None:
        wait = ctx.registrations.acquire(address_key(req.remote_addr))
        if wait > 0:
            raise Throttled("Too many registrations; slow down.", wait)
    _, visitor, token = await ctx.engine.directory.register_visitor(None, None)
    return json_response({"id": visitor.id, "token": token}, 201)


async def visitor_chats(ctx: Context, req: Request, visitor_id: str) -> Response:
    visitor = require_visitor(ctx.state, principal(ctx, req), visitor_id)
    return page(ctx, req, ctx.state.chats_of_visitor(visitor.id), views.chat_collection_view)


async def visitor_create_chat(
    ctx: Context, req: Request, visitor_id: str, room_id: str
) -> Response:
    visitor = require_visitor(ctx.state, principal(ctx, req), visitor_id)
    room = ctx.state.rooms.get(room_id)
    if room is None or not visitor_may_use_room(visitor, room):
        raise errors.NotFound("Room not found.")
    data = read_body(req, v.VisitorChatCreate)
    created, chat = await ctx.engine.directory.visitor_chat(room, visitor, resume=data.auto_resume)
    return json_response(views.chat_collection_view(chat), 201 if created else 200)


async def visitor_get_chat(ctx: Context, req: Request, visitor_id: str, chat_id: str) -> Response:
    visitor = require_visitor(ctx.state, principal(ctx, req), visitor_id)
    return json_response(views.chat_collection_view(own_chat(ctx.state, visitor, chat_id)))


async def visitor_update_chat(
    ctx: Context, req: Request, visitor_id: str, chat_id: str
) -> Response:
    visitor = require_visitor(ctx.state, principal(ctx, req), visitor_id)
    chat = own_chat(ctx.state, visitor, chat_id)
    data = read_body(req, v.VisitorChatUpdate)
    await ctx.engine.chats.update(chat, is_ended=data.is_ended, is_private=None)
    return json_response(views.chat_collection_view(chat))


async def visitor_presences(ctx: Context, req: Request, visitor_id: str, chat_id: str) -> Response:
    state = ctx.state
    visitor = require_visitor(state, principal(ctx, req), visitor_id)
    chat = own_chat(state, visitor, chat_id)
    render = views.presence_renderer(chat.id, state.users, visitor_view=True)
    return page(ctx, req, state.presences_of_chat(chat), render)


async def visitor_participations(
    ctx: Context, req: Request, visitor_id: str, chat_id: str
) -> Response:
    visitor = require_visitor(ctx.state, principal(ctx, req), visitor_id)
    chat = own_chat(ctx.state, visitor, chat_id)
    return page(ctx, req, ctx.state.participations_of_chat(chat), views.participation_view)


async def visitor_history(ctx: Context, req: Request, visitor_id: str, chat_id: str) -> Response:
    state = ctx.state
    visitor = require_visitor(state, principal(ctx, req), visitor_id)
    chat = own_chat(state, visitor, chat_id)
    render = partial(views.message_view, users=state.users, visitor_view=True)
    return page(ctx, req, state.messages_of_chat(chat), render)


async def visitor_post(ctx: Context, req: Request, visitor_id: str, chat_id: str) -> Response:
    visitor = require_visitor(ctx.state, principal(ctx, req), visitor_id)
    chat = own_chat(ctx.state, visitor, chat_id)
    data = read_body(req, v.VisitorMessageCreate)
    message = await ctx.engine.chats.post(
        chat,
        sender_type=SENDER_VISITOR,
        sender_id=visitor.id,
        type="msg",
        message=data.message,
        page_url=data.page_url,
        page_title=data.page_title,
    )
    return json_response(views.message_view(message, ctx.state.users, visitor_view=True), 201)


VISITOR = "/api/v5/client/visitors/{visitor_id}"
CHAT = VISITOR + "/chats/{chat_id}"
ROUTES = [
    Route(
        "POST",
        "/api/v5/client/visitors",
        open_registration,
        "Open visitor registration (rate limited).",
        status=201,
        response=shapes.ref("VisitorCredentials"),
        token=False,
    ),
    Route(
        "GET",
        VISITOR + "/chats",
        visitor_chats,
        "The visitor's chats, oldest first.",
        response=shapes.cursor_page("ChatCollection"),
    ),
    Route(
        "POST",
        VISITOR + "/rooms/{room_id}/chats",
        visitor_create_chat,
        "Resume the visitor's recent chat in a room, or start one.",
        body=v.VisitorChatCreate,
        status=201,
        also=(200,),
        response=shapes.ref("ChatCollection"),
    ),
    Route(
        "GET",
        CHAT,
        visitor_get_chat,
        "One of the visitor's chats.",
        response=shapes.ref("ChatCollection"),
    ),
    Route(
        "PATCH",
        CHAT,
        visitor_update_chat,
        "End the chat (is_ended only).",
        body=v.VisitorChatUpdate,
        response=shapes.ref("ChatCollection"),
    ),
    Route(
        "GET",
        CHAT + "/presences",
        visitor_presences,
        "Users present, by join time (visitor view).",
        response=shapes.cursor_page("VisitorPresence"),
    ),
    Route(
        "GET",
        CHAT + "/participations",
        visitor_participations,
        "The chat's participations.",
        response=shapes.cursor_page("Participation"),
    ),
    Route(
        "GET",
        CHAT + "/messages",
        visitor_history,
        "The chat history (visitor view).",
        response=shapes.cursor_page("VisitorMessage"),
    ),
    Route(
        "POST",
        CHAT + "/messages",
        visitor_post,
        "Post a message as the visitor.",
        body=v.VisitorMessageCreate,
        status=201,
        response=shapes.ref("VisitorMessage"),
    ),
]
