"""A chat's messages as the org sees them: the history and posting as a user."""

from __future__ import annotations

from functools import partial

from engine import shapes, views
from engine.model import SENDER_USER
from gateway import validation as v
from gateway.auth import named_user, require_org, require_self, visible_chat
from gateway.routes.context import Context, Route, page, principal, read_body
from gateway.web import Request, Response, json_response


async def history(ctx: Context, req: Request, org_id: str, chat_id: str) -> Response:
    state = ctx.state
    require_org(state, principal(ctx, req), org_id)
    chat = visible_chat(state, org_id, chat_id)
    return page(
        ctx, req, state.messages_of_chat(chat), partial(views.message_view, users=state.users)
    )


async def post_message(ctx: Context, req: Request, org_id: str, chat_id: str) -> Response:
    state = ctx.state
    caller = principal(ctx, req)
    require_org(state, caller, org_id)
    chat = visible_chat(state, org_id, chat_id)
    data = read_body(req, v.MessageCreate)
    sender = named_user(state, org_id, data.sender_id, "sender_id")
    require_self(caller, sender.id, "sender_id")
    message = await ctx.engine.chats.post(
        chat,
        sender_type=SENDER_USER,
        sender_id=sender.id,
        type=data.type,
        message=data.message,
        page_url=data.page_url,
        page_title=data.page_title,
    )
    return json_response(views.message_view(message, state.users), 201)


MESSAGES = "/api/v5/orgs/{org_id}/chats/{chat_id}/messages"
ROUTES = [
    Route(
        "GET",
        MESSAGES,
        history,
        "The chat history, oldest first.",
        response=shapes.cursor_page("Message"),
    ),
    Route(
        "POST",
        MESSAGES,
        post_message,
        "Post a message as a user.",
        body=v.MessageCreate,
        status=201,
        response=shapes.ref("Message"),
    ),
]
