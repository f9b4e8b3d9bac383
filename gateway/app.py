"""The HTTP API (CONTRACT §1–§5): parse and authorize, ask the engine, render.

Routes hold no rules: validation of shapes is in ``gateway.validation``, who may do what
in ``gateway.auth`` / ``engine.access``, every domain rule in ``engine``. Writes go
through the engine's actors; reads use the engine state's ordered views. The request
pipeline (routing, errors, the request object) is ``gateway.web``; quart-trio is the
ASGI face of the same pipeline, for connections hypercorn serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import quart
import trio
from pydantic import BaseModel
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from engine import errors, views
from engine.access import visitor_may_use_room, visitor_usable_in_room
from engine.actors.supervisor import Engine
from engine.ids import is_uuid, is_visitor_id
from engine.model import SENDER_USER, SENDER_VISITOR
from engine.report import ORDERINGS, ReportQuery, run_report
from engine.state import PRINCIPAL_USER, PRINCIPAL_VISITOR
from gateway import validation as v
from gateway.auth import (
    Principal,
    authenticate,
    named_user,
    org_user,
    own_chat,
    require_admin,
    require_org,
    require_self,
    require_visitor,
    visible_chat,
    visible_room,
)
from gateway.cors import Cors
from gateway.forwarded import Forwarded
from gateway.http1 import WS_LATE
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.openapi import OpenApi
from gateway.pagination import link_builder, paginate
from gateway.ratelimit import RateLimiter, Throttled, address_key
from gateway.settings import Network, RateLimit
from gateway.web import (
    METHODS,
    Handler,
    Hook,
    Request,
    Response,
    Router,
    WebApp,
    error_body,
    error_response,
    json_response,
)
from gateway.ws import WsGateway, WsSettings

M = TypeVar("M", bound=BaseModel)
STARTING = "The engine is starting."
WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))
LIMITED = frozenset((PRINCIPAL_USER, PRINCIPAL_VISITOR))  # org and admin tokens are not
MAX_WRITERS = 100_000  # write buckets kept at most (see gateway/ratelimit.py)

HTTP_ERRORS = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.BodyTooLarge,
    415: errors.UnsupportedMediaType,
}


@dataclass(slots=True)
class GatewaySettings:
    admin_token_hash: str
    public_url: str | None = None
    open_registration: bool = True
    # writes per user or visitor (None: not limited); open registration per address
    rate_limit: RateLimit | None = field(default_factory=lambda: RateLimit(20.0, 100))
    # open registration per client address (None: not limited); its own option, so
    # that turning the write limit off does not open registration to a flood
    registration_rate_limit: RateLimit | None = field(default_factory=lambda: RateLimit(5.0, 20))
    cors_origins: tuple[str, ...] = ()
    forwarded_allow_ips: tuple[Network, ...] = ()
    ws: WsSettings | None = None


@dataclass(slots=True)
class Gateway:
    web: WebApp  # called directly by the built-in HTTP/1.1 server
    asgi: QuartTrio  # the same pipeline as an ASGI app, for hypercorn
    ws: WsGateway


def create_app(engine: Engine, settings: GatewaySettings) -> Gateway:
    api = OpenApi()
    router = Router()
    state = engine.state
    limits = settings.rate_limit
    registration_limit = settings.registration_rate_limit
    registrations = (
        None
        if registration_limit is None
        else RateLimiter(registration_limit.rate, registration_limit.burst, trio.current_time)
    )
    writes = (
        None
        if limits is None
        else RateLimiter(limits.rate, limits.burst, trio.current_time, MAX_WRITERS)
    )
    ws = WsGateway(engine, settings.admin_token_hash, settings.ws or WsSettings())
    metrics = Metrics(engine, ws)

    def route(
        method: str,
        path: str,
        summary: str,
        *,
        body: type[BaseModel] | None = None,
        status: int = 200,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            router.add(method, path, handler)
            api.add(method, path, summary, body=body, status=status)
            return handler

        return register

    def plain(method: str, path: str) -> Callable[[Handler], Handler]:
        """A route outside the API (operations): not in the OpenAPI document."""

        def register(handler: Handler) -> Handler:
            router.add(method, path, handler)
            return handler

        return register

    def check(req: Request) -> None:
        # (bodies over v.MAX_BODY_BYTES never get here: both transports refuse them)
        if req.path.startswith("/api/") and not engine.started.is_set():
            raise errors.Unavailable(STARTING)
        if writes is not None and req.method in WRITES:
            charge_write(req, writes)

    def charge_write(req: Request, writes: RateLimiter) -> None:
        """Before any handler runs, so a refused write changes nothing. Only a user's or
        a visitor's token is limited; without a valid token the handler answers 401."""
        try:
            caller = authenticate(state, req.header(b"authorization"), settings.admin_token_hash)
        except errors.NotAuthenticated:
            return
        if caller.kind in LIMITED:
            wait = writes.acquire(caller.id)
            if wait > 0:
                raise Throttled("Too many writes; slow down.", wait)

    def principal(req: Request) -> Principal:
        caller = authenticate(state, req.header(b"authorization"), settings.admin_token_hash)
        if caller.kind == "user":
            engine.reachability.touch(caller.id)  # a request keeps its presences alive
        return caller

    def read_body(req: Request, model: type[M]) -> M:
        return v.validate(model, v.parse_json_object(req.body, req.header(b"content-type")))

    def base_url(req: Request) -> str:
        if settings.public_url:
            return settings.public_url.rstrip("/")
        return f"{req.scheme}://{req.host}"

    def page(req: Request, view: Any, render: Callable[[Any], Any]) -> Response:
        args = req.args
        return json_response(
            paginate(
                view,
                path=req.path,
                cursor=args.get("cursor"),
                page_size=v.parse_page_size(args),
                url_for=link_builder(base_url(req), req.path, req.arg_pairs),
                render=render,
            )
        )

    def render_message(message: Any) -> dict[str, Any]:
        return views.message_view(message, state.users)

    def render_visitor_message(message: Any) -> dict[str, Any]:
        return views.message_view(message, state.users, visitor_view=True)

    # -- operations ------------------------------------------------------------------
    @plain("GET", "/healthz")
    async def healthz(req: Request) -> Response:
        return json_response({"status": "ok"})

    @plain("GET", "/readyz")
    async def readyz(req: Request) -> Response:
        if not engine.started.is_set():
            return error_response(errors.Unavailable(STARTING))
        return json_response({"status": "ready"})

    @plain("GET", "/metrics")
    async def metrics_endpoint(req: Request) -> Response:
        return Response(metrics.render(), 200, CONTENT_TYPE)

    @plain("GET", "/openapi.json")
    async def openapi(req: Request) -> Response:
        return json_response(api.document())

    # -- directory (CONTRACT §3) -------------------------------------------------------
    @route("POST", "/api/v5/orgs", "Create an organization (admin).", body=v.OrgCreate, status=201)
    async def create_org(req: Request) -> Response:
        require_admin(principal(req))
        data = read_body(req, v.OrgCreate)
        org, token = await engine.directory.create_org(data.name)
        return json_response(views.org_view(org, token), 201)

    @route("GET", "/api/v5/orgs/{org_id}", "Get an organization.")
    async def get_org(req: Request, org_id: str) -> Response:
        require_org(state, principal(req), org_id, users_too=False)
        return json_response(views.org_view(state.orgs[org_id]))

    @route("POST", "/api/v5/orgs/{org_id}/rooms", "Create a room.", body=v.RoomCreate, status=201)
    async def create_room(req: Request, org_id: str) -> Response:
        require_org(state, principal(req), org_id, users_too=False)
        data = read_body(req, v.RoomCreate)
        room = await engine.directory.create_room(org_id, data.name, data.private_chats)
        return json_response(views.room_view(room), 201)

    @route("GET", "/api/v5/orgs/{org_id}/rooms", "List the org's own and shared rooms.")
    async def list_rooms(req: Request, org_id: str) -> Response:
        require_org(state, principal(req), org_id)
        return page(req, state.rooms_of_org(org_id), views.room_view)

    @route(
        "POST",
        "/api/v5/orgs/{org_id}/rooms/{room_id}/shares",
        "Share a room with another org.",
        body=v.ShareCreate,
        status=201,
    )
    async def share_room(req: Request, org_id: str, room_id: str) -> Response:
        require_org(state, principal(req), org_id, users_too=False)
        room = visible_room(state, org_id, room_id)
        if room.organization_id != org_id:
            raise errors.Forbidden("Only the room's owner may share it.")
        data = read_body(req, v.ShareCreate)
        await engine.directory.share_room(room, data.organization_id)
        return json_response({"room_id": room.id, "organization_id": data.organization_id}, 201)

    @route(
        "POST",
        "/api/v5/orgs/{org_id}/users",
        "Create a user (operator).",
        body=v.UserCreate,
        status=201,
    )
    async def create_user(req: Request, org_id: str) -> Response:
        require_org(state, principal(req), org_id, users_too=False)
        data = read_body(req, v.UserCreate)
        user, token = await engine.directory.create_user(
            org_id,
            first_name=data.first_name,
            last_name=data.last_name,
            alias=data.alias,
            room_ids=data.room_ids,
        )
        return json_response(views.user_view(user, token), 201)

    @route("GET", "/api/v5/orgs/{org_id}/users/{user_id}", "Get a user.")
    async def get_user(req: Request, org_id: str, user_id: str) -> Response:
        require_org(state, principal(req), org_id)
        return json_response(views.user_view(org_user(state, org_id, user_id)))

    @route(
        "POST",
        "/api/v5/orgs/{org_id}/visitors",
        "Register (or re-key) a visitor of the org.",
        body=v.VisitorCreate,
        status=201,
    )
    async def register_visitor(req: Request, org_id: str) -> Response:
        require_org(state, principal(req), org_id, users_too=False)
        data = read_body(req, v.VisitorCreate)
        created, visitor, token = await engine.directory.register_visitor(org_id, data.id)
        return json_response({"id": visitor.id, "token": token}, 201 if created else 200)

    @route(
        "POST", "/api/v5/client/visitors", "Open visitor registration (rate limited).", status=201
    )
    async def open_registration(req: Request) -> Response:
        if not settings.open_registration:
            raise errors.Forbidden("Open visitor registration is turned off.")
        if registrations is not None:
            wait = registrations.acquire(address_key(req.remote_addr))
            if wait > 0:
                raise Throttled("Too many registrations; slow down.", wait)
        _, visitor, token = await engine.directory.register_visitor(None, None)
        return json_response({"id": visitor.id, "token": token}, 201)

    # -- chats (CONTRACT §5) -------------------------------------------------------------
    @route(
        "GET", "/api/v5/orgs/{org_id}/rooms/{room_id}/chats", "The room's open chats, oldest first."
    )
    async def room_chats(req: Request, org_id: str, room_id: str) -> Response:
        require_org(state, principal(req), org_id)
        room = visible_room(state, org_id, room_id)
        waiting = v.optional_bool(req.args, "is_waiting_response")
        return page(req, state.open_chats_of_room(room.id, waiting), views.chat_collection_view)

    @route(
        "GET",
        "/api/v5/orgs/{org_id}/users/{user_id}/chats",
        "Chats the user participates or was present in.",
    )
    async def user_chats(req: Request, org_id: str, user_id: str) -> Response:
        caller = principal(req)
        require_org(state, caller, org_id)
        user = org_user(state, org_id, user_id)
        require_self(caller, user.id)
        return page(req, state.chats_of_user(user.id), views.chat_collection_view)

    @route(
        "GET",
        "/api/v5/orgs/{org_id}/users/{user_id}/current_chats",
        "Chats the user is present in, by join time.",
    )
    async def current_chats(req: Request, org_id: str, user_id: str) -> Response:
        caller = principal(req)
        require_org(state, caller, org_id)
        user = org_user(state, org_id, user_id)
        require_self(caller, user.id)
        return page(req, state.current_chats_of_user(user.id), views.chat_collection_view)

    @route(
        "POST",
        "/api/v5/orgs/{org_id}/rooms/{room_id}/visitors/{visitor_id}/chats",
        "Create a chat, or resume one with auto_resume.",
        body=v.ChatCreate,
        status=201,
    )
    async def create_chat(req: Request, org_id: str, room_id: str, visitor_id: str) -> Response:
        caller = principal(req)
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
        created, chat = await engine.directory.create_chat(room, visitor, auto_resume=resume_user)
        return json_response(views.chat_collection_view(chat), 201 if created else 200)

    @route(
        "GET", "/api/v5/orgs/{org_id}/chats", "The org's chat report: filters, orderings, pages."
    )
    async def chat_report(req: Request, org_id: str) -> Response:
        require_org(state, principal(req), org_id)
        query = report_query(req, org_id)
        result = run_report(state, org_id, query)
        link = link_builder(base_url(req), req.path, req.arg_pairs, "page")

        def url_for(number: int) -> str:
            return link(str(number))

        return json_response(
            {
                "count": result.count,
                "num_pages": result.num_pages,
                "per_page": query.page_size,
                "current_page": result.page,
                "next_page": result.page + 1 if result.page < result.num_pages else None,
                "previous_page": result.page - 1 if result.page > 1 else None,
                "next_page_url": url_for(result.page + 1)
                if result.page < result.num_pages
                else None,
                "previous_page_url": url_for(result.page - 1) if result.page > 1 else None,
                "results": [rich(chat) for chat in result.chats],
            }
        )

    def report_query(req: Request, org_id: str) -> ReportQuery:
        args = req.args
        ordering = args.get("ordering", "start_time")
        if ordering not in ORDERINGS:
            raise errors.invalid_field("ordering", f"Must be one of {', '.join(ORDERINGS)}.")
        since_seq = None
        since_id = args.get("since_id")
        if since_id is not None:
            since = state.chats.get(since_id) if is_uuid(since_id) else None
            if since is None or since.organization_id != org_id:
                raise errors.invalid_field("since_id", "Unknown chat.")
            since_seq = since.seq
        room_id = args.get("room_id")
        if room_id is not None and not is_uuid(room_id):
            raise errors.invalid_field("room_id", "Must be a room id.")
        tag = args.get("tag")
        if tag is not None and not tag.strip():
            raise errors.invalid_field("tag", "Must not be blank.")
        return ReportQuery(
            ordering=ordering,
            page=v.parse_int(args, "page", minimum=1) or 1,
            page_size=v.parse_page_size(args),
            since_seq=since_seq,
            start_time=v.parse_time(args, "start_time"),
            end_time=v.parse_time(args, "end_time"),
            has_sales=v.optional_bool(args, "has_sales"),
            is_real_conversation=v.optional_bool(args, "is_real_conversation"),
            room_id=room_id,
            tag=tag,
            min_message_count=v.parse_int(args, "min_message_count", minimum=0),
            only_ended=v.optional_bool(args, "only_ended") or False,
        )

    def rich(chat: Any) -> dict[str, Any]:
        api_data = state.visitors[chat.visitor_id].api_data.get(chat.organization_id, [])
        return views.chat_rich_view(chat, state.users, api_data)

    @route(
        "POST",
        "/api/v5/orgs/{org_id}/chats/{chat_id}/tags",
        "Tag a chat (idempotent).",
        body=v.TagCreate,
        status=201,
    )
    async def add_tag(req: Request, org_id: str, chat_id: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        data = read_body(req, v.TagCreate)
        await engine.chats.tag(chat, data.name, add=True)
        return json_response({"name": data.name}, 201)

    @route(
        "DELETE",
        "/api/v5/orgs/{org_id}/chats/{chat_id}/tags/{name}",
        "Remove a tag (idempotent).",
        status=204,
    )
    async def remove_tag(req: Request, org_id: str, chat_id: str, name: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        await engine.chats.tag(chat, name, add=False)
        return Response(b"", 204, None)

    @route("GET", "/api/v5/orgs/{org_id}/chats/{chat_id}", "A chat in rich form.")
    async def get_chat(req: Request, org_id: str, chat_id: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        return json_response(rich(chat))

    @route(
        "PATCH",
        "/api/v5/orgs/{org_id}/chats/{chat_id}",
        "End a chat and/or set is_private.",
        body=v.ChatUpdate,
    )
    async def update_chat(req: Request, org_id: str, chat_id: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        data = read_body(req, v.ChatUpdate)
        await engine.chats.update(chat, is_ended=data.is_ended, is_private=data.is_private)
        return await get_chat(req, org_id, chat_id)

    # -- presences -----------------------------------------------------------------------
    @route(
        "GET",
        "/api/v5/orgs/{org_id}/chats/{chat_id}/presences",
        "Users present in the chat, by join time.",
    )
    async def list_presences(req: Request, org_id: str, chat_id: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        return page(
            req,
            state.presences_of_chat(chat),
            lambda presence: views.presence_view(presence, chat.id, state.users[presence.user_id]),
        )

    @route(
        "POST",
        "/api/v5/orgs/{org_id}/chats/{chat_id}/presences",
        "Join a user to the chat.",
        body=v.PresenceCreate,
        status=201,
    )
    async def join(req: Request, org_id: str, chat_id: str) -> Response:
        caller = principal(req)
        require_org(state, caller, org_id)
        chat = visible_chat(state, org_id, chat_id)
        data = read_body(req, v.PresenceCreate)
        user = named_user(state, org_id, data.user_id, "user_id")
        require_self(caller, user.id, "user_id")
        outcome = await engine.chats.join(chat, user, exclusive=data.exclusive)
        return json_response(
            views.presence_view(outcome.presence, chat.id, user), 201 if outcome.created else 200
        )

    @route(
        "DELETE",
        "/api/v5/orgs/{org_id}/chats/{chat_id}/presences/{user_id}",
        "Remove a user from the chat.",
        status=204,
    )
    async def leave(req: Request, org_id: str, chat_id: str, user_id: str) -> Response:
        caller = principal(req)
        require_org(state, caller, org_id)
        chat = visible_chat(state, org_id, chat_id)
        user = org_user(state, org_id, user_id)
        require_self(caller, user.id)
        await engine.chats.leave(chat, user.id)
        return Response(b"", 204, None)

    carts_path = "/api/v5/orgs/{org_id}/chats/{chat_id}/shopping_carts"

    @route("POST", carts_path, "Open a shopping cart.", body=v.CartCreate, status=201)
    async def create_cart(req: Request, org_id: str, chat_id: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        data = read_body(req, v.CartCreate)
        cart = await engine.chats.create_cart(chat, data.currency, [p.row() for p in data.products])
        return json_response(views.cart_view(cart), 201)

    @route("PATCH", carts_path + "/{cart_id}", "Lock (purchase) a cart.", body=v.CartUpdate)
    async def update_cart(req: Request, org_id: str, chat_id: str, cart_id: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        chat.cart(cart_id)  # 404 before validating the body
        data = read_body(req, v.CartUpdate)
        cart = await engine.chats.lock_cart(chat, cart_id, locked=data.locked)
        return json_response(views.cart_view(cart))

    @route(
        "POST",
        carts_path + "/{cart_id}/products",
        "Add a product to a cart.",
        body=v.ProductCreate,
        status=201,
    )
    async def add_product(req: Request, org_id: str, chat_id: str, cart_id: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        chat.cart(cart_id)  # 404 before validating the body
        data = read_body(req, v.ProductCreate)
        product = await engine.chats.add_product(chat, cart_id, data.row())
        return json_response(views.product_view(product), 201)

    @route(
        "DELETE",
        carts_path + "/{cart_id}/products/{product_id}",
        "Remove a product (sets deleted_at).",
        status=204,
    )
    async def delete_product(
        req: Request, org_id: str, chat_id: str, cart_id: str, product_id: str
    ) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        await engine.chats.delete_product(chat, cart_id, product_id)
        return Response(b"", 204, None)

    @route(
        "PUT",
        "/api/v5/orgs/{org_id}/visitors/{visitor_id}/api_data",
        "Replace the visitor's api_data.",
    )
    async def put_api_data(req: Request, org_id: str, visitor_id: str) -> Response:
        require_org(state, principal(req), org_id)
        visitor = state.visitors.get(visitor_id) if is_visitor_id(visitor_id) else None
        if visitor is None or visitor.organization_id not in (None, org_id):
            raise errors.NotFound("Visitor not found.")
        items = v.parse_api_data(req.body, req.header(b"content-type"))
        await engine.directory.set_api_data(org_id, visitor, items)
        return json_response(visitor.api_data[org_id])

    # -- the visitor (client) API, CONTRACT §6 -------------------------------------------
    client_base = "/api/v5/client/visitors/{visitor_id}"

    def visitor_view_presence(chat: Any) -> Callable[[Any], dict[str, Any]]:
        return lambda presence: views.presence_view(
            presence, chat.id, state.users[presence.user_id], visitor_view=True
        )

    @route("GET", client_base + "/chats", "The visitor's chats, oldest first.")
    async def visitor_chats(req: Request, visitor_id: str) -> Response:
        visitor = require_visitor(state, principal(req), visitor_id)
        return page(req, state.chats_of_visitor(visitor.id), views.chat_collection_view)

    @route(
        "POST",
        client_base + "/rooms/{room_id}/chats",
        "Resume the visitor's recent chat in a room, or start one.",
        body=v.VisitorChatCreate,
        status=201,
    )
    async def visitor_create_chat(req: Request, visitor_id: str, room_id: str) -> Response:
        visitor = require_visitor(state, principal(req), visitor_id)
        room = state.rooms.get(room_id)
        if room is None or not visitor_may_use_room(visitor, room):
            raise errors.NotFound("Room not found.")
        data = read_body(req, v.VisitorChatCreate)
        created, chat = await engine.directory.visitor_chat(room, visitor, resume=data.auto_resume)
        return json_response(views.chat_collection_view(chat), 201 if created else 200)

    @route("GET", client_base + "/chats/{chat_id}", "One of the visitor's chats.")
    async def visitor_get_chat(req: Request, visitor_id: str, chat_id: str) -> Response:
        visitor = require_visitor(state, principal(req), visitor_id)
        return json_response(views.chat_collection_view(own_chat(state, visitor, chat_id)))

    @route(
        "PATCH",
        client_base + "/chats/{chat_id}",
        "End the chat (is_ended only).",
        body=v.VisitorChatUpdate,
    )
    async def visitor_update_chat(req: Request, visitor_id: str, chat_id: str) -> Response:
        visitor = require_visitor(state, principal(req), visitor_id)
        chat = own_chat(state, visitor, chat_id)
        data = read_body(req, v.VisitorChatUpdate)
        await engine.chats.update(chat, is_ended=data.is_ended, is_private=None)
        return json_response(views.chat_collection_view(chat))

    @route(
        "GET",
        client_base + "/chats/{chat_id}/presences",
        "Users present, by join time (visitor view).",
    )
    async def visitor_presences(req: Request, visitor_id: str, chat_id: str) -> Response:
        visitor = require_visitor(state, principal(req), visitor_id)
        chat = own_chat(state, visitor, chat_id)
        return page(req, state.presences_of_chat(chat), visitor_view_presence(chat))

    @route("GET", client_base + "/chats/{chat_id}/participations", "The chat's participations.")
    async def visitor_participations(req: Request, visitor_id: str, chat_id: str) -> Response:
        visitor = require_visitor(state, principal(req), visitor_id)
        chat = own_chat(state, visitor, chat_id)
        return page(req, state.participations_of_chat(chat), views.participation_view)

    @route("GET", client_base + "/chats/{chat_id}/messages", "The chat history (visitor view).")
    async def visitor_history(req: Request, visitor_id: str, chat_id: str) -> Response:
        visitor = require_visitor(state, principal(req), visitor_id)
        chat = own_chat(state, visitor, chat_id)
        return page(req, state.messages_of_chat(chat), render_visitor_message)

    @route(
        "POST",
        client_base + "/chats/{chat_id}/messages",
        "Post a message as the visitor.",
        body=v.VisitorMessageCreate,
        status=201,
    )
    async def visitor_post(req: Request, visitor_id: str, chat_id: str) -> Response:
        visitor = require_visitor(state, principal(req), visitor_id)
        chat = own_chat(state, visitor, chat_id)
        data = read_body(req, v.VisitorMessageCreate)
        message = await engine.chats.post(
            chat,
            sender_type=SENDER_VISITOR,
            sender_id=visitor.id,
            type="msg",
            message=data.message,
            page_url=data.page_url,
            page_title=data.page_title,
        )
        return json_response(render_visitor_message(message), 201)

    # -- participations and messages -------------------------------------------------------
    @route(
        "GET",
        "/api/v5/orgs/{org_id}/users/{user_id}/chats/{chat_id}/participations",
        "The chat's participations.",
    )
    async def participations(req: Request, org_id: str, user_id: str, chat_id: str) -> Response:
        require_org(state, principal(req), org_id)
        org_user(state, org_id, user_id)
        chat = visible_chat(state, org_id, chat_id)
        return page(req, state.participations_of_chat(chat), views.participation_view)

    @route(
        "GET", "/api/v5/orgs/{org_id}/chats/{chat_id}/messages", "The chat history, oldest first."
    )
    async def history(req: Request, org_id: str, chat_id: str) -> Response:
        require_org(state, principal(req), org_id)
        chat = visible_chat(state, org_id, chat_id)
        return page(req, state.messages_of_chat(chat), render_message)

    @route(
        "POST",
        "/api/v5/orgs/{org_id}/chats/{chat_id}/messages",
        "Post a message as a user.",
        body=v.MessageCreate,
        status=201,
    )
    async def post_message(req: Request, org_id: str, chat_id: str) -> Response:
        caller = principal(req)
        require_org(state, caller, org_id)
        chat = visible_chat(state, org_id, chat_id)
        data = read_body(req, v.MessageCreate)
        sender = named_user(state, org_id, data.sender_id, "sender_id")
        require_self(caller, sender.id, "sender_id")
        message = await engine.chats.post(
            chat,
            sender_type=SENDER_USER,
            sender_id=sender.id,
            type=data.type,
            message=data.message,
            page_url=data.page_url,
            page_title=data.page_title,
        )
        return json_response(render_message(message), 201)

    hooks: list[Hook] = []
    if settings.forwarded_allow_ips:  # first: CORS and the handlers see the rewrite
        hooks.append(Forwarded(settings.forwarded_allow_ips))
    if settings.cors_origins:
        hooks.append(Cors(settings.cors_origins))
    web = WebApp(router, check, metrics.observe_request, hooks)
    return Gateway(web=web, asgi=asgi_app(web), ws=ws)


def asgi_app(web: WebApp) -> QuartTrio:
    """quart-trio as the ASGI layer of ``web``: one catch-all route hands every request
    to the same pipeline the built-in server calls (quart reads the body and enforces
    its size; its own routing and errors see only that route)."""
    app = QuartTrio("chat_engine")
    app.config["MAX_CONTENT_LENGTH"] = v.MAX_BODY_BYTES
    methods = list(METHODS)

    async def forward(path: str = "") -> quart.Response:
        incoming = quart.request
        body = await incoming.get_data(cache=False)
        assert isinstance(body, bytes)
        scope = incoming.scope
        answer = await web.handle(
            Request(
                incoming.method,
                scope["path"],
                scope["query_string"],
                [(name.lower(), value) for name, value in scope["headers"]],
                body,
                scheme=scope.get("scheme", "http"),
                server=scope.get("server"),  # type: ignore[arg-type]
                client=scope.get("client"),
            )
        )
        response = quart.Response(answer.body, status=answer.status)
        if answer.content_type is not None:
            response.headers["Content-Type"] = answer.content_type
        else:
            response.headers.pop("Content-Type", None)
        for name, value in answer.headers:
            response.headers[name] = value
        return response

    app.add_url_rule("/", "forward-root", forward, methods=methods, provide_automatic_options=False)
    app.add_url_rule(
        "/<path:path>", "forward", forward, methods=methods, provide_automatic_options=False
    )

    @app.websocket("/ws")
    async def websocket_endpoint() -> quart.Response:
        # The front door takes every connection that opens with GET /ws; one that
        # reaches here sent the upgrade after other requests on the same connection.
        return quart.Response(
            error_body(errors.Invalid(WS_LATE)), 400, content_type="application/json"
        )

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> quart.Response:
        kind = HTTP_ERRORS.get(error.code or 500)
        failure = (
            errors.Invalid(error.description or "Bad request.")
            if kind is None
            else kind(error.description or kind.code)
        )
        return quart.Response(error_body(failure), failure.status, content_type="application/json")

    return app
